"""One batched forward pass over a mix of prefill chunks and decodes, reading K/V by block table.

A step packs every scheduled token of every sequence into one flat batch of N rows, so all the
matrix multiplications (QKV, output projection, MLP, LM head) run once for the whole step. Only
attention needs to know which rows belong to which sequence: each sequence's queries attend to
its own keys, read from the KV pool (kv_cache.py) through its block table (attention.py).
The weights are plain fused tensors loaded by models/ (any family in `models.FAMILIES`); one
`layer` serves them all, switching on the few things a family changes (ModelConfig).

Shapes: N tokens this step, C width, H query heads, Hkv K/V heads, D head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from week2_serving.engine import paged_cpu
from week2_serving.engine.attention import AttnGroup, attend, plan_groups
from week2_serving.engine.kv_cache import kv_bytes_per_block, make_kv_cache
from week2_serving.engine.lora.manager import LoRAManager, LoRAStep
from week2_serving.engine.models import LayerWeights, ModelConfig, load_config, load_weights
from week2_serving.engine.models.layers import ACTIVATIONS, norm, rms_norm
from week2_serving.engine.scheduler import ScheduledBatch
from week2_serving.engine.step_plan import StepPlanner, padded_tables


@dataclass
class StepInputs:
    """What one forward pass needs, on the device: built by `prepare`, consumed by `forward`."""

    ids: torch.Tensor  # (N,) token ids of every scheduled token, sequence after sequence
    positions: torch.Tensor  # (N,) each token's position in its sequence
    slot_mapping: torch.Tensor  # (N,) the pool slot each token's K/V is written to
    groups: list[AttnGroup]  # which rows attend together, and to which slots
    sample_rows: torch.Tensor  # (S,) the rows whose logits are sampled (last of a sequence,
    #                            the last 1 + k of a speculating one)
    lora: LoRAStep | None = None  # which rows use which LoRA adapter (lora/); None: none does
    # for the in-place paged attention op (paged_cpu.py): every sequence's block table and
    # which sequence each row belongs to; None where a path does not build them
    tables: torch.Tensor | None = None  # (B, M) block ids, padded with block 0
    seq_of_row: torch.Tensor | None = None  # (N,)


class ModelRunner:
    """The weights and the KV pool on one device, in one dtype (weights, activations, KV).

    `model` is an HF folder of a family in `models.FAMILIES` (week 1's export is one: a plain
    Llama or GPT-2 folder); its config is read if `config` is not given.
    """

    def __init__(
        self,
        model: str | Path,
        num_blocks: int,
        block_size: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_model_len: int | None = None,  # RoPE tables cover [0, this); None: the model's
        config: ModelConfig | None = None,
        kv_cache_dtype: str = "auto",  # auto (the model dtype) | int8 | fp8: kv_quant.py
    ):
        self.cfg = c = config or load_config(model)
        self.device, self.dtype = torch.device(device), dtype
        self.num_blocks, self.block_size = num_blocks, block_size
        positions = min(max_model_len or c.max_model_len, c.max_model_len)
        self.weights = load_weights(model, c, self.device, dtype, positions)
        self.kv = make_kv_cache(
            kv_cache_dtype,
            c.num_layers,
            num_blocks,
            block_size,
            c.num_kv_heads,
            c.head_dim,
            dtype,
            self.device,
        )
        self.act = ACTIVATIONS[c.act]
        # rotate_half(x) = roll(x, D/2) with its first half negated: the sign, made once
        half = c.head_dim // 2
        self.rope_sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.device, dtype)
        self.lora: LoRAManager | None = None  # set by the engine when it serves adapters
        self.lora_step: LoRAStep | None = None  # this step's, for `proj`
        self.packed: dict[int, torch.Tensor] = {}  # id(weight) -> its oneDNN-packed copy
        self.packed_min_rows = 1  # fewer rows than this: the plain weights (prepack_linears)

    def prepack_linears(self, hint: int) -> int:
        """Reorder every projection weight and the LM head once into oneDNN's blocked layout
        (as vLLM's CPU build and torch.compile's CPU backend do for linears): `linear` then
        multiplies by the packed copy and skips re-laying out the weight at every call. The
        plain weights stay (LoRA, the reference paths and CUDA read them), so the weights take
        twice the memory. `hint`: the batch rows to lay the weights out for (any number of rows
        works). A weight oneDNN will not take stays plain. Returns how many were packed."""
        if self.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return 0
        # float32 with fewer rows than this goes the plain way: a matrix-vector product is
        # slower through oneDNN's packed kernel than through the plain one (levers.py shows it
        # at c1); bf16 has no such case
        self.packed_min_rows = 4 if self.dtype == torch.float32 else 1
        w = self.weights
        names = ("qkv_w", "o_w", "gate_up_w", "down_w")
        for t in [*(getattr(lw, n) for lw in w.layers for n in names), w.lm_head]:
            try:
                self.packed[id(t)] = torch.ops.mkldnn._reorder_linear_weight(t.contiguous(), hint)
            except RuntimeError:  # a layout or dtype this oneDNN build has no kernel for
                continue
        return len(self.packed)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """x W^T + b, by the packed copy of W when `prepack_linears` made one."""
        if not self.packed:  # (also what torch.compile traces: it never packs)
            return F.linear(x, w, b)
        packed = self.packed.get(id(w))
        if packed is None or x.shape[0] < self.packed_min_rows:
            return F.linear(x, w, b)
        return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")

    compiled = None  # (attn_in, attn_out) through torch.compile: `compile_layers`

    def compile_layers(self) -> None:
        """torch.compile the dense parts of a block, everything but the KV write and attention
        (`attn_in`: norm, QKV, RoPE; `attn_out`: output projection, MLP, residuals): one graph
        each, shared by every layer (the weights are its inputs), with the row count N
        symbolic (dynamic=True) so that any batch runs the same compiled code instead of one
        graph per bucket of sizes. Compiled here, on dummy rows (N = 1 and 3: a symbolic size
        is never 1), so a first request does not wait for it and a missing compiler is said at
        start. Steps with LoRA rows run the plain methods (their deltas are per row)."""
        compiled = (
            torch.compile(self.attn_in, dynamic=True),
            torch.compile(self.attn_out, dynamic=True),
        )
        c, lw = self.cfg, self.weights.layers[0]
        for n in (1, 3):
            x = torch.zeros(n, c.hidden_size, device=self.device, dtype=self.dtype)
            rope = None
            if self.weights.pos_embed is None:
                rope = self.rope_tables(torch.zeros(n, dtype=torch.long, device=self.device))
            with torch.inference_mode():
                q, _, _ = compiled[0](lw, x, rope)
                compiled[1](lw, x, q.reshape(n, -1))
        self.compiled = compiled

    @staticmethod
    def bytes_per_block(
        cfg: ModelConfig, block_size: int, dtype: torch.dtype, kv_cache_dtype: str = "auto"
    ) -> int:
        """2 (K and V) x layers x Hkv x D x bytes x block_size (+ scales when quantized)."""
        return kv_bytes_per_block(
            kv_cache_dtype, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, block_size, dtype
        )

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Run one step; return the logits (S, V) of the last token of each sampled sequence."""
        self.kv.copy_blocks(batch.copies)
        if self.graphs is not None and (logits := self.graphs.run(batch)) is not None:
            return logits  # a plain decode step, replayed from a CUDA graph (cuda_graphs.py)
        return self.forward(self.prepare(batch))

    graphs = None  # cuda_graphs.DecodeGraphs when decode steps replay CUDA graphs

    # --- 1. inputs ------------------------------------------------------------------------------
    fast_prepare = True  # build inputs with tensor ops (step_plan.py); False: the loop below
    bucket_decodes = True  # fast path only: False puts every decode in one attention group
    # attention by the in-place paged op (paged_cpu.py, CPU, unquantized KV): one call per
    # layer for the whole step; the SDPA groups are then not built on the fast path
    paged_kernel = False

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """The step's flat token batch, where each token's K/V goes, and the attention groups."""
        if not self.fast_prepare:
            return self.prepare_reference(batch)
        if getattr(self, "planner", None) is None:
            args = (self.block_size, self.device, self.dtype, self.bucket_decodes)
            self.planner = StepPlanner(*args, groups=not self.paged_kernel)
        lora = self.lora.plan(batch.seqs, batch.num_tokens) if self.lora else None
        ids, positions, slots, groups, sample_rows, tables, seq_of_row = self.planner.plan(batch)
        return StepInputs(ids, positions, slots, groups, sample_rows, lora, tables, seq_of_row)

    def prepare_reference(self, batch: ScheduledBatch) -> StepInputs:
        """`prepare` as a Python loop over every token: the plain reference the fast path is
        tested against."""
        bs, dev = self.block_size, self.device
        ids, positions, slot_mapping, sample_rows = [], [], [], []
        decode, prefill = [], []  # (block_table, ctx_len, q_len, row_start)
        seq_of_row: list[int] = []
        for i, (seq, n, want) in enumerate(zip(batch.seqs, batch.num_tokens, batch.sample)):
            seq_of_row += [i] * n
            start, c = len(ids), seq.num_computed
            ids += (seq.tokens[c : c + n] + seq.spec_tokens)[:n]  # + proposed tokens (spec/)
            positions += range(c, c + n)
            table = seq.block_table
            slot_mapping += [table[p // bs] * bs + p % bs for p in range(c, c + n)]
            (decode if n == 1 or seq.spec_tokens else prefill).append((table, c + n, n, start))
            if want:  # the last row; a speculating sequence: its last 1 + k rows
                sample_rows += range(start + n - 1 - len(seq.spec_tokens), start + n)
        return StepInputs(
            ids=torch.tensor(ids, device=dev),
            positions=torch.tensor(positions, device=dev),
            slot_mapping=torch.tensor(slot_mapping, device=dev),
            groups=plan_groups(decode, prefill, bs, dev, self.dtype),
            sample_rows=torch.tensor(sample_rows, dtype=torch.long, device=dev),
            lora=self.lora.plan(batch.seqs, batch.num_tokens) if self.lora else None,
            tables=torch.tensor(padded_tables(batch.seqs), dtype=torch.long, device=dev),
            seq_of_row=torch.tensor(seq_of_row, dtype=torch.long, device=dev),
        )

    # --- 2. attention ---------------------------------------------------------------------------
    def attention(self, layer: int, q: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """Every row's attention over its own sequence's keys in the pool: (N, H, D) -> (N, H, D)."""
        if self.paged_kernel and inputs.tables is not None:  # one op, K/V read in place
            k, v = self.kv.layer(layer)
            args = (inputs.tables, inputs.seq_of_row, inputs.positions, self.block_size)
            return paged_cpu.paged_attention(q, k, v, *args)
        groups = inputs.groups
        if self.kv.quantized:  # int8/fp8: attention reads dequantized K/V through the cache
            return attend(q, None, None, groups, partial(self.kv.gather, layer))
        return attend(q, *self.kv.layer(layer), groups)

    # --- 3. the forward pass --------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Embed, run every layer over the flat batch, and the LM head on the sampled rows."""
        w, c = self.weights, self.cfg
        self.lora_step = inputs.lora
        x = F.embedding(inputs.ids, w.embed)  # (N, C)
        rope = None
        if w.pos_embed is not None:  # GPT-2: learned positions, added once
            x = x + F.embedding(inputs.positions, w.pos_embed)
        else:  # RoPE tables for this step's positions, shared by all layers
            rope = self.rope_tables(inputs.positions)
        for layer, lw in enumerate(w.layers):
            x = self.layer(layer, lw, x, inputs, rope)
        if inputs.sample_rows.numel() == 0:
            return x.new_empty(0, c.vocab_size)
        last = self.block_norm(x[inputs.sample_rows], w.norm_f)  # (S, C)
        return self.linear(last, w.lm_head, None)  # (S, V)

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) of each row's position, each (N, 1, D): what `attn_in` rotates by."""
        w = self.weights
        return w.rope_cos[positions][:, None], w.rope_sin[positions][:, None] * self.rope_sign

    def layer(
        self,
        layer: int,
        lw: LayerWeights,
        x: torch.Tensor,  # (N, C)
        inputs: StepInputs,
        rope: tuple[torch.Tensor, torch.Tensor] | None,  # (cos, signed sin), each (N, 1, D)
    ) -> torch.Tensor:  # (N, C)
        """One transformer block: fused QKV, (q/k norm), RoPE, K/V into the pool, paged
        attention, then the MLP (SwiGLU with gate and up fused, or GPT-2's fc -> GELU)."""
        self.current_layer = layer  # for the LoRA deltas in `proj`
        attn_in, attn_out = self.attn_in, self.attn_out
        if self.compiled is not None and self.lora_step is None:
            attn_in, attn_out = self.compiled
        q, k, v = attn_in(lw, x, rope)
        self.kv.write(layer, inputs.slot_mapping, k, v)  # this step's K/V -> pool
        attn = self.attention(layer, q, inputs)  # (N, H, D)
        return attn_out(lw, x, attn.reshape(x.shape[0], -1))

    def attn_in(
        self, lw: LayerWeights, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # q (N, H, D), k and v (N, Hkv, D)
        """A block up to attention: norm, fused QKV, (q/k norm), RoPE."""
        c = self.cfg
        N, H, Hkv, D = x.shape[0], c.num_heads, c.num_kv_heads, c.head_dim
        h = self.block_norm(x, lw.norm1)
        qkv = self.proj("qkv", h, lw.qkv_w, lw.qkv_b)  # (N, (H + 2 Hkv) D)
        qk = qkv[:, : (H + Hkv) * D].view(N, H + Hkv, D)
        v = qkv[:, (H + Hkv) * D :].view(N, Hkv, D)
        if lw.q_norm is not None:  # Qwen3: RMSNorm over each head's D dims, before RoPE
            q, k = qk[:, :H], qk[:, H:]
            q, k = rms_norm(q, lw.q_norm, c.norm_eps), rms_norm(k, lw.k_norm, c.norm_eps)
            qk = torch.cat([q, k], dim=1)  # (N, H + Hkv, D)
        if rope is not None:  # rotate Q and K heads in one go; (N, 1, D) tables broadcast
            qk = qk * rope[0] + qk.roll(D // 2, dims=-1) * rope[1]
        return qk[:, :H], qk[:, H:], v

    def attn_out(self, lw: LayerWeights, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The rest of a block after attention (N, H D): output projection, residual, norm,
        MLP, residual."""
        c = self.cfg
        o = self.proj("o", attn, lw.o_w, lw.o_b)
        if self.fused_norms:  # the residual add and the norm in one call
            x, h = paged_cpu.add_rms_norm(x, o, lw.norm2.weight, c.norm_eps)
        else:
            x = x + o
            h = norm(c.norm, x, lw.norm2, c.norm_eps)
        up = self.proj("gate_up", h, lw.gate_up_w, lw.gate_up_b)  # (N, 2 I) or (N, I)
        if c.gated_mlp:  # SwiGLU: down(act(gate) * up)
            gate, up = up.chunk(2, dim=-1)
            up = self.act(gate) * up
        else:  # GPT-2: proj(act(fc(h)))
            up = self.act(up)
        return x + self.proj("down", up, lw.down_w, lw.down_b)

    # RMSNorm (and the residual add before the second) by the C++ ops built with the paged op
    # (paged_cpu.py): one call where the plain path makes four or five (float32 casts, norm,
    # scale, add). Set by the engine on the CPU for RMSNorm models
    fused_norms = False

    def block_norm(self, x: torch.Tensor, w) -> torch.Tensor:
        c = self.cfg
        if self.fused_norms:
            return paged_cpu.rms_norm(x, w.weight, c.norm_eps)
        return norm(c.norm, x, w, c.norm_eps)

    def proj(
        self, name: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
    ) -> torch.Tensor:  # (N, in) -> (N, out)
        """Every projection of a layer goes through here: "qkv", "o", "gate_up" or "down"
        (GPT-2's c_fc is "gate_up", its mlp c_proj "down"): x W^T + b, plus each row's own
        LoRA delta s (x A) B when this step has rows with an adapter (lora/)."""
        y = self.linear(x, w, b)
        if self.lora_step is not None:
            self.lora.add_delta(self.current_layer, name, x, y, self.lora_step)  # in place
        return y
