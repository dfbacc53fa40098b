"""Week 2: serving and benchmarking — a load-test harness for OpenAI-compatible servers (vLLM,
SGLang), the launcher that starts them, and the metrics that describe them."""
