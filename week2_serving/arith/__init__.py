"""Inference arithmetic lab: what a model costs in memory, bandwidth, FLOPs and dollars.

Reading order: `model` (a config.json -> parameters, weight bytes, KV bytes per token, FLOPs
per token), `hardware` (the accelerator table, with sources), `roofline` (decode / prefill
steps on the two roofs, what fits, MFU/MBU, cost), `cpu_bandwidth` (this machine measured),
`summary` and `__main__` (the command). The lesson: LESSON.md.
"""
