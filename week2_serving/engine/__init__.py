"""Our own serving engine: paged KV cache, continuous batching, prefix caching (week 2b).

Read in this order: sequence.py -> block_manager.py -> scheduler.py -> model_runner.py ->
sampler.py -> llm_engine.py, then the server: protocol.py -> async_engine.py ->
detokenizer.py -> responses.py -> api.py -> server.py (the command line).
"""
