"""A GPT in plain PyTorch, in two flavours of one config, plus the bigram baseline.

- `gpt2`:  learned position embeddings, LayerNorm, GELU MLP, multi-head attention, biases.
- `llama`: rotary position embeddings (RoPE), RMSNorm, SwiGLU MLP, grouped-query attention
           (fewer K/V heads than Q heads), no biases.

Shapes: B batch, T new tokens this call, S = past + T key slots, C = n_embd,
H = n_head, Hkv = n_kv_head, D = head_dim = C // H, V = vocab_size.

`forward(idx, cache=..., positions=..., key_mask=...)` runs either the whole sequence
(training, or generation without a cache) or only the new tokens against a KVCache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from week1_gpt_kvcache.kvcache import KVCache

Arch = Literal["gpt2", "llama"]  # the two families of building blocks
ARCHS: tuple[str, ...] = get_args(Arch)


@dataclass
class GPTConfig:
    arch: str = "llama"  # "gpt2" or "llama": which family of building blocks
    vocab_size: int = 2048  # tokenizer size (V)
    block_size: int = 1024  # max context length: positions 0 .. block_size-1
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # query heads (H)
    n_kv_head: int | None = None  # key/value heads (Hkv); None = n_head (MHA). llama: H % Hkv == 0
    n_embd: int = 256  # residual width (C); head_dim D = C // H
    mlp_hidden: int | None = None  # MLP width; None = 4C (gpt2) or ~8C/3 rounded to 32 (llama)
    dropout: float = 0.0  # on attention output and MLP output (training only)
    tie_weights: bool = True  # LM head shares the token-embedding matrix
    rope_theta: float = 10000.0  # RoPE base (llama)
    norm_eps: float = 1e-5  # LayerNorm / RMSNorm epsilon

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        if self.arch == "gpt2" and self.n_kv_head != self.n_head:
            raise ValueError(
                f"gpt2 uses multi-head attention: n_kv_head={self.n_kv_head} must equal "
                f"n_head={self.n_head} (grouped-query attention is a llama feature)"
            )
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.mlp_hidden is None:
            if self.arch == "gpt2":
                self.mlp_hidden = 4 * self.n_embd
            else:  # SwiGLU has 3 matrices: 8C/3 keeps the parameter count of a 4C GELU MLP
                self.mlp_hidden = 32 * math.ceil(8 * self.n_embd / 3 / 32)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


# Model sizes: `tiny` for tests, `cpu` for the default run, `gpu` for real hardware.
# A new size is one more row here (train --size NAME picks it).
SIZES = {
    "tiny": dict(
        block_size=128, n_layer=2, n_head=2, n_kv_head=1, n_embd=64
    ),  # head_dim 32: vLLM CPU needs >= 32
    "cpu": dict(block_size=1024, n_layer=4, n_head=4, n_kv_head=2, n_embd=256),
    # a draft model for speculative decoding (week 2): cpu's context, a fraction of its work
    "draft": dict(block_size=1024, n_layer=2, n_head=2, n_kv_head=1, n_embd=128),
    "gpu": dict(block_size=1024, n_layer=12, n_head=12, n_kv_head=4, n_embd=768),
}


def make_config(arch: str = "llama", size: str = "cpu", **overrides) -> GPTConfig:
    """A preset: `arch` picks the blocks, `size` the dimensions (gpt2 always uses MHA)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; use one of {', '.join(SIZES)}")
    kw = dict(SIZES[size])
    if arch == "gpt2":
        kw["n_kv_head"] = kw["n_head"]
    return GPTConfig(arch=arch, **{**kw, **overrides})


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight — LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (block_size, D): angle(pos, i) = pos * theta^(-2i/D), halves repeated."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    pos = torch.arange(cfg.block_size, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # (block_size, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (block_size, D)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) by the position's angle. x: (B, h, T, D); cos/sin: (B, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        bias = cfg.arch == "gpt2"
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=bias)
        self.wk = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=bias)
        self.wv = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        rope: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin: (B, 1, T, D)
        mask: torch.Tensor | None,  # (B, 1, T, S) bool, True = may attend; None = causal
        cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D): past + new
        if self.n_kv_head != self.n_head:  # GQA: query head h reads K/V head h // (H/Hkv)
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, D)
        causal = mask is None and T > 1 and (cache is None or k.shape[2] == T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.drop(self.wo(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.arch = cfg.arch
        if cfg.arch == "gpt2":  # C -> 4C -> GELU -> C
            self.fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden)
            self.proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd)
        else:  # SwiGLU: down(silu(gate(x)) * up(x))
            self.gate = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
            self.up = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
            self.down = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.arch == "gpt2":
            return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))
        return self.drop(self.down(F.silu(self.gate(x)) * self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        Norm = (
            (lambda: nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps))
            if cfg.arch == "gpt2"
            else (lambda: RMSNorm(cfg.n_embd, cfg.norm_eps))
        )
        self.norm1, self.norm2 = Norm(), Norm()
        self.attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.norm1(x), rope, mask, cache)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = (
            nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
            if cfg.arch == "gpt2"
            else RMSNorm(cfg.n_embd, cfg.norm_eps)
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if cfg.arch == "llama":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("wo.weight", "proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` (default: block_size)."""
        p = self.lm_head.weight
        return KVCache(
            self.cfg.n_layer,
            batch_size,
            self.cfg.n_kv_head,
            max_len or self.cfg.block_size,
            self.cfg.head_dim,
            dtype=p.dtype,
            device=p.device,
        )

    def forward(
        self,
        idx: torch.Tensor,  # (B, T) token ids
        targets: torch.Tensor | None = None,  # (B, T) next-token ids; -1 = ignore
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,  # (B, T) absolute positions; default past..past+T-1
        key_mask: torch.Tensor | None = None,  # (B, S) bool over all key slots, False = padding
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens (past {past} + new {T}) exceeds the model's context "
                f"block_size={self.cfg.block_size}; shorten the prompt or max_new_tokens"
            )
        if positions is None:
            positions = torch.arange(past, past + T, device=idx.device).expand(B, T)
        if key_mask is None and past > 0 and T > 1:  # a chunk after cached tokens: explicit mask
            key_mask = torch.ones(B, past + T, dtype=torch.bool, device=idx.device)
        mask = None
        if key_mask is not None:  # padding: build the explicit (B, 1, T, S) mask
            S = past + T
            slots_q = torch.arange(past, S, device=idx.device).view(1, T, 1)
            slots_k = torch.arange(S, device=idx.device).view(1, 1, S)
            mask = (slots_k <= slots_q) & key_mask[:, None, :S]  # causal and not padding
            mask = (mask | (slots_k == slots_q)).unsqueeze(
                1
            )  # a pad query sees itself: no NaN rows

        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        rope = None
        if self.cfg.arch == "llama":
            rope = (
                self.rope_cos[positions].unsqueeze(1),
                self.rope_sin[positions].unsqueeze(1),
            )  # (B,1,T,D)
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        if cache is not None:
            cache.advance(T)
        x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x), None  # (B, T, V)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss


class BigramLM(nn.Module):
    """The lesson's baseline: the next token depends only on the current one (a V x V table)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    @classmethod
    def from_counts(cls, tokens: torch.Tensor, vocab_size: int, smoothing: float = 0.1) -> BigramLM:
        """The maximum-likelihood bigram model (with add-`smoothing`), i.e. what training converges to."""
        counts = torch.full((vocab_size, vocab_size), smoothing)
        counts.index_put_(
            (tokens[:-1].long(), tokens[1:].long()), torch.ones(len(tokens) - 1), accumulate=True
        )
        model = cls(vocab_size)
        with torch.no_grad():
            model.table.weight.copy_((counts / counts.sum(1, keepdim=True)).log())
        return model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.table(idx)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss
