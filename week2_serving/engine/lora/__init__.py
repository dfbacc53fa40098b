"""Multi-LoRA serving: many fine-tuned adapters over one base model, mixed in one batch.

Read in this order: config.py (the settings) -> adapters.py (a peft folder, arranged for the
fused projections) -> ops.py (one matmul pair per adapter of the step; BGMV / SGMV when many:
every row's own adapter in one pass) -> manager.py (slots, LRU eviction to host memory, which
row uses which slot); the HTTP API is ../lora_routes.py.

Where it enters the engine: `ModelRunner.proj` (each projection adds its delta),
`ModelRunner.prepare` (the step's `LoRAStep`), `Scheduler.lora_fits` (admission needs a slot),
`LLMEngine.make_sequence` (the request's adapter and its prefix-cache salt).
"""
