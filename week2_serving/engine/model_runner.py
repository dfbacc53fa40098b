"""One batched forward pass over a mix of prefill chunks and decodes, reading K/V by block table.

A step packs every scheduled token of every sequence into one flat batch of N rows, so all the
matrix multiplications (QKV, output projection, MLP, LM head) run once for the whole step. Only
attention needs to know which rows belong to which sequence: each sequence's queries attend to
its own keys, read from the KV pool (kv_cache.py) through its block table (attention.py).

Shapes: N tokens this step, C width, H query heads, Hkv K/V heads, D head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from week1_gpt_kvcache.hf_convert import from_hf_folder
from week1_gpt_kvcache.model import GPT, RMSNorm
from week2_serving.engine.attention import AttnGroup, attend, plan_groups
from week2_serving.engine.kv_cache import kv_bytes_per_block, make_kv_cache
from week2_serving.engine.scheduler import ScheduledBatch


@dataclass
class StepInputs:
    """What one forward pass needs, on the device: built by `prepare`, consumed by `forward`."""

    ids: torch.Tensor  # (N,) token ids of every scheduled token, sequence after sequence
    positions: torch.Tensor  # (N,) each token's position in its sequence
    slot_mapping: torch.Tensor  # (N,) the pool slot each token's K/V is written to
    groups: list[AttnGroup]  # which rows attend together, and to which slots
    sample_rows: torch.Tensor  # (S,) the rows whose logits are sampled (last of a sequence)


@dataclass
class FusedLayer:
    """One block's weights, fused the way inference engines do: Q, K and V come out of one
    matmul (C -> (H + 2 Hkv) D), and SwiGLU's gate and up out of another (C -> 2 * hidden).
    Fewer, larger matmuls: the same math with less per-call overhead (vLLM's QKVParallelLinear
    and MergedColumnParallelLinear)."""

    block: torch.nn.Module  # the week 1 Block: norms, and the GPT-2 MLP as is
    qkv_w: torch.Tensor  # ((H + 2 Hkv) D, C)
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor  # (C, H D)
    o_b: torch.Tensor | None
    gate_up_w: torch.Tensor | None  # (2 hidden, C), llama only


def norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's norm; RMSNorm as one fused op instead of week 1's readable six."""
    if isinstance(module, RMSNorm):
        return F.rms_norm(x, (x.shape[-1],), module.weight, module.eps)
    return module(x)


def fuse(blk: torch.nn.Module) -> FusedLayer:
    a = blk.attn
    cat_b = None if a.wq.bias is None else torch.cat([a.wq.bias, a.wk.bias, a.wv.bias])
    gate_up = None
    if hasattr(blk.mlp, "gate"):
        gate_up = torch.cat([blk.mlp.gate.weight, blk.mlp.up.weight]).detach()
    return FusedLayer(
        block=blk,
        qkv_w=torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]).detach(),
        qkv_b=None if cat_b is None else cat_b.detach(),
        o_w=a.wo.weight.detach(),
        o_b=None if a.wo.bias is None else a.wo.bias.detach(),
        gate_up_w=gate_up,
    )


class ModelRunner:
    """The weights and the KV pool on one device, in one dtype (the model is cast to it)."""

    def __init__(
        self,
        model: GPT | str | Path,
        num_blocks: int,
        block_size: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        kv_cache_dtype: str = "auto",  # auto (the model dtype) | int8 | fp8: kv_quant.py
    ):
        model = from_hf_folder(model, device) if not isinstance(model, GPT) else model
        # RoPE tables are fp32 buffers: cast with the weights, as HF casts cos/sin to x's dtype
        self.model = model.to(device=device, dtype=dtype).eval()
        self.cfg = self.model.cfg
        self.device, self.dtype = torch.device(device), dtype
        self.num_blocks, self.block_size = num_blocks, block_size
        c = self.cfg
        self.kv = make_kv_cache(
            kv_cache_dtype,
            c.n_layer,
            num_blocks,
            block_size,
            c.n_kv_head,
            c.head_dim,
            dtype,
            self.device,
        )
        self.layers = [fuse(blk) for blk in self.model.blocks]
        # rotate_half(x) = roll(x, D/2) with its first half negated: the sign, made once
        half = self.cfg.head_dim // 2
        self.rope_sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.device, dtype)

    @staticmethod
    def bytes_per_block(
        cfg, block_size: int, dtype: torch.dtype = torch.float32, kv_cache_dtype: str = "auto"
    ) -> int:
        """2 (K and V) x layers x Hkv x D x bytes x block_size (+ scales when quantized)."""
        return kv_bytes_per_block(
            kv_cache_dtype, cfg.n_layer, cfg.n_kv_head, cfg.head_dim, block_size, dtype
        )

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Run one step; return the logits (S, V) of the last token of each sampled sequence."""
        self.kv.copy_blocks(batch.copies)
        return self.forward(self.prepare(batch))

    # --- 1. inputs ------------------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """The step's flat token batch, where each token's K/V goes, and the attention groups."""
        bs, dev = self.block_size, self.device
        ids, positions, slot_mapping, sample_rows = [], [], [], []
        decode, prefill = [], []  # (block_table, ctx_len, q_len, row_start)
        for seq, n, want in zip(batch.seqs, batch.num_tokens, batch.sample):
            start, c = len(ids), seq.num_computed
            ids += seq.tokens[c : c + n]
            positions += range(c, c + n)
            table = seq.block_table
            slot_mapping += [table[p // bs] * bs + p % bs for p in range(c, c + n)]
            (decode if n == 1 else prefill).append((table, c + n, n, start))
            if want:
                sample_rows.append(start + n - 1)
        return StepInputs(
            ids=torch.tensor(ids, device=dev),
            positions=torch.tensor(positions, device=dev),
            slot_mapping=torch.tensor(slot_mapping, device=dev),
            groups=plan_groups(decode, prefill, bs, dev, self.dtype),
            sample_rows=torch.tensor(sample_rows, dtype=torch.long, device=dev),
        )

    # --- 2. attention ---------------------------------------------------------------------------
    def attention(self, layer: int, q: torch.Tensor, groups: list[AttnGroup]) -> torch.Tensor:
        """Every row's attention over its own sequence's keys in the pool: (N, H, D) -> (N, H, D)."""
        if self.kv.quantized:  # int8/fp8: attention reads dequantized K/V through the cache
            return attend(q, None, None, groups, partial(self.kv.gather, layer))
        return attend(q, *self.kv.layer(layer), groups)

    # --- 3. the forward pass --------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Embed, run every layer over the flat batch, and the LM head on the sampled rows."""
        m = self.model
        x = m.wte(inputs.ids)  # (N, C)
        rope = None
        if m.wpe is not None:
            x = x + m.wpe(inputs.positions)
        else:  # RoPE tables for this step's positions, shared by all layers
            pos = inputs.positions
            cos, sin = m.rope_cos[pos][:, None], m.rope_sin[pos][:, None]  # (N, 1, D)
            rope = (cos, sin * self.rope_sign)
        for layer, fl in enumerate(self.layers):
            x = self.layer(layer, fl, x, inputs, rope)
        if inputs.sample_rows.numel() == 0:
            return x.new_empty(0, self.cfg.vocab_size)
        last = norm(m.norm_f, x[inputs.sample_rows])  # (S, C)
        return m.lm_head(last)  # (S, V)

    def layer(
        self,
        layer: int,
        fl: FusedLayer,
        x: torch.Tensor,  # (N, C)
        inputs: StepInputs,
        rope: tuple[torch.Tensor, torch.Tensor] | None,  # (cos, signed sin), each (N, 1, D)
    ) -> torch.Tensor:  # (N, C)
        """One transformer block: fused QKV, RoPE, K/V into the pool, paged attention, MLP."""
        N, H, Hkv, D = x.shape[0], self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        blk = fl.block
        h = norm(blk.norm1, x)
        qkv = F.linear(h, fl.qkv_w, fl.qkv_b)  # (N, (H + 2 Hkv) D)
        qk = qkv[:, : (H + Hkv) * D].view(N, H + Hkv, D)
        v = qkv[:, (H + Hkv) * D :].view(N, Hkv, D)
        if rope is not None:  # rotate Q and K heads in one go; (N, 1, D) tables broadcast
            qk = qk * rope[0] + qk.roll(D // 2, dims=-1) * rope[1]
        q, k = qk[:, :H], qk[:, H:]  # (N, H, D), (N, Hkv, D)
        self.kv.write(layer, inputs.slot_mapping, k, v)  # this step's K/V -> pool
        attn = self.attention(layer, q, inputs.groups)  # (N, H, D)
        x = x + F.linear(attn.reshape(N, H * D), fl.o_w, fl.o_b)
        h = norm(blk.norm2, x)
        if fl.gate_up_w is not None:  # SwiGLU: down(silu(gate) * up), gate and up in one go
            gate, up = F.linear(h, fl.gate_up_w).chunk(2, dim=-1)
            return x + blk.mlp.down(F.silu(gate) * up)
        return x + blk.mlp(h)
