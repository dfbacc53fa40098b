"""Week 3: LoRA / QLoRA fine-tuning, DPO, multi-LoRA serving on vLLM, and the tune -> serve -> eval
loop. Modules, in pipeline order: data, sft, dpo, evaluate, serve, summary (see README.md)."""
