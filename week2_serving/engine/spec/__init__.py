"""Speculative decoding: guess several tokens cheaply, verify them all in one target forward.

Read in this order: config.py (what is asked) -> ngram.py (guesses without a model) ->
draft.py (guesses from a smaller model, its K/V in a pool of its own under the same block
ids) -> rejection.py (the acceptance rule, pure functions) -> decoder.py (where it enters the
engine's step) -> metrics.py (vLLM's counters). `python -m week2_serving.engine.spec_bench`
measures what it buys.
"""
