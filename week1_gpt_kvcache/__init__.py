"""Week 1: a GPT from scratch (GPT-2 and Llama presets), the KV cache, and the HF export."""
