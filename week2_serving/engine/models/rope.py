"""Rotary position embeddings: the per-pair frequencies, their scaling, and the cos/sin tables.

Pair i of a head (dims i and i + D/2, HF's `rotate_half` layout) turns by angle p * inv_freq[i]
at position p, with inv_freq[i] = theta^(-2i/D). Context-extension schemes change only
inv_freq:
- `linear` (position interpolation): every frequency divided by `factor`;
- `llama3` (Llama 3.1 / 3.2): low frequencies (wavelength longer than the original context /
  low_freq_factor) divided by `factor`, high ones kept, the band between blended smoothly.
The tables are computed once in float32 and cast to the run's dtype (as HF casts cos/sin).
"""

from __future__ import annotations

import math

import torch

from week2_serving.engine.models.config import ModelConfig

SCALINGS = ("linear", "llama3")  # rope_type values this engine applies (besides plain RoPE)


def inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """(D/2,) float32 angular frequency of each rotated pair, scaling applied."""
    D = cfg.head_dim
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    s = cfg.rope_scaling
    if s is None:
        return base
    kind = s["rope_type"]
    if kind not in SCALINGS:
        raise ValueError(
            f"rope_type {kind!r} ({cfg.architecture}) is not supported; this engine applies "
            f"plain RoPE and {', '.join(SCALINGS)}"
        )
    factor = _positive(s, "factor")
    if kind == "linear":
        return base / factor
    return _llama3(base, factor, s)


def _positive(s: dict, key: str) -> float:
    value = s.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"rope scaling {key}={value!r} must be a number > 0")
    if not math.isfinite(value):
        raise ValueError(f"rope scaling {key}={value!r} must be finite")
    return float(value)


def _llama3(base: torch.Tensor, factor: float, s: dict) -> torch.Tensor:
    low, high = _positive(s, "low_freq_factor"), _positive(s, "high_freq_factor")
    if not high > low:
        raise ValueError(f"rope scaling: high_freq_factor={high} must exceed low_freq_factor={low}")
    old_len = _positive(s, "original_max_position_embeddings")
    wavelen = 2 * math.pi / base  # (D/2,) tokens per full turn of each pair
    scaled = torch.where(wavelen > old_len / low, base / factor, base)  # slow pairs stretched
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the slow edge, 1 at the fast edge
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    between = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(between, blended, scaled)


def rope_tables(cfg: ModelConfig, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of every position's angles, (P, D) float32 each, in rotate_half layout."""
    freqs = torch.outer(torch.arange(num_positions, dtype=torch.float32), inv_freq(cfg))
    emb = torch.cat([freqs, freqs], dim=-1)  # (P, D): pair i uses dims i and i + D/2
    return emb.cos(), emb.sin()
