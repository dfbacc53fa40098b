"""Which adapters sit in the weight slots, which rows of a step use which slot, and the delta.

Three places an adapter can be, like pages in a memory hierarchy:
- registered: a name and its peft folder (`add`, `remove`); any number;
- in host memory: its weights read and arranged for the fused projections (`max_cpu_loras`
  of them, least recently used dropped first; a dropped one is read from its folder again);
- in a slot: copied into the stacked tensors the forward pass reads (`max_loras` slots, plus
  slot 0 for the base model, all zeros). A step whose batch needs an adapter that has no slot
  takes the least recently used slot that no row of this step needs; the scheduler admits a
  request only when its adapter has or can get one (Scheduler.lora_fits), so that slot exists.

The forward pass calls `add_delta(layer, proj, x, y, step)` for each projection
(ModelRunner.proj): one matmul pair per adapter of the step when it holds few, else SGMV for
its prefill chunks and BGMV for its decode rows (ops.py); a step of base rows only adds nothing.
Shapes: N rows in the step, S = max_loras + 1 slots, R = max_lora_rank.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass

import torch

from week2_serving.engine.lora.adapters import FUSED, fused_pair, load_adapter
from week2_serving.engine.lora.config import LoRAConfig, check_name

__all__ = ["LoRAConfig", "LoRAManager", "LoRAStep", "attach_lora", "bind_lora"]
from week2_serving.engine.lora.ops import Group, add_grouped, bgmv, groups_of

Pairs = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (layer, proj) -> (A, B)


GROUPED_MAX = 6  # distinct adapters in a step up to which each gets one matmul pair (ops.py);
# past it, the gather (BGMV) of the decode rows costs the same whatever the mix: fewer ops


@dataclass
class LoRAStep:
    """Which rows of this step get which adapter (rows of the base model are in none)."""

    groups: list[Group]  # (slot, rows, scale): rows that share one matmul pair (add_grouped)
    gather: tuple[torch.Tensor, torch.Tensor] | None  # (Nd,) decode rows, (Nd,) slots: BGMV
    num_decode: int  # rows that decode one token with an adapter
    num_prefill: int  # rows of prefill chunks with an adapter


@dataclass
class Registered:
    name: str
    path: str
    rank: int
    uid: int  # new for every load: a name loaded again never shares the old one's KV cache
    scale: float


class LoRAManager:
    def __init__(self, config: LoRAConfig, model_cfg, device: torch.device, dtype: torch.dtype):
        if not model_cfg.gated_mlp:
            raise ValueError(
                "LoRA serving needs a Llama-style model (gate/up/down MLP); this one is "
                f"{model_cfg.architecture!r}"
            )
        # On a CPU the adapters stay float32 whatever the model's dtype: a bf16 matmul of these
        # skinny shapes (rank R) has no fast kernel there and costs more than the projection
        # itself, while float32 is quick and exact; x is cast up, the delta added back (ops.py).
        self.dtype = torch.float32 if device.type == "cpu" else dtype
        self.config, self.device = config, device
        self.R = config.max_lora_rank
        c, S = model_cfg, config.max_loras + 1
        hd, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        C, inner = c.hidden_size, c.intermediate_size
        self.shapes = {  # proj -> (in, the out sizes of its fused parts)
            "qkv": (C, [hd, kv, kv]),
            "o": (hd, [C]),
            "gate_up": (C, [inner, inner]),
            "down": (inner, [C]),
        }
        self.n_layer = c.num_layers
        kw = dict(device=device, dtype=self.dtype)
        self.A = [  # per layer, per projection: (S, in, k R)
            {p: torch.zeros(S, i, len(o) * self.R, **kw) for p, (i, o) in self.shapes.items()}
            for _ in range(c.num_layers)
        ]
        self.B = [  # (S, k R, out)
            {p: torch.zeros(S, len(o) * self.R, sum(o), **kw) for p, (i, o) in self.shapes.items()}
            for _ in range(c.num_layers)
        ]
        self.scales = torch.zeros(S, **kw)  # (S,) slot 0: the base model, scale 0
        self.registry: dict[str, Registered] = {}
        self.host: OrderedDict[str, Pairs] = OrderedDict()  # least recently used first
        self.slot_of: OrderedDict[str, int] = OrderedDict()  # in a slot, least recently used first
        self._uids = itertools.count(1)
        self.num_slot_loads = 0  # copies host -> slot
        self.num_disk_loads = 0  # reads of a peft folder
        for name, path in config.modules.items():
            self.add(name, path)

    # --- the registry ---------------------------------------------------------------------------
    def add(self, name: str, path: str) -> Registered:
        """Register (and read) an adapter; ValueError / FileNotFoundError say what is wrong."""
        check_name(name)
        if name in self.registry:
            raise ValueError(f"a LoRA adapter named {name!r} is already loaded; unload it first")
        pairs, adapter = self._read(name, path)
        reg = Registered(name, adapter.path, adapter.rank, next(self._uids), adapter.scale)
        self.registry[name] = reg
        self._keep_on_host(name, pairs)
        return reg

    def remove(self, name: str) -> None:
        """Forget an adapter (its slot and host copy too); KeyError if unknown."""
        del self.registry[name]
        self.host.pop(name, None)
        slot = self.slot_of.pop(name, None)
        if slot is not None:
            self.scales[slot] = 0.0

    def cache_salt(self, salt: str | None, name: str | None) -> str | None:
        """The prefix-cache salt of a request: the adapter (and its load) joins the user's salt,
        so different adapters never share K/V; every salt is wrapped alike, so no user salt can
        be crafted to equal an adapter's."""
        if salt is None and name is None:
            return None
        uid = self.registry[name].uid if name is not None else 0
        return json.dumps([salt, name, uid])

    # --- host memory ----------------------------------------------------------------------------
    def _read(self, name: str, path: str):
        adapter = load_adapter(name, path, self.R)
        bad = sorted({layer for layer, _ in adapter.weights if layer >= self.n_layer})
        if bad:
            raise ValueError(f"LoRA {name!r} has layers {bad}; the model has {self.n_layer}")
        pairs: Pairs = {}
        for layer in range(self.n_layer):
            for proj, (i, outs) in self.shapes.items():
                pair = fused_pair(adapter, layer, proj, outs, i, self.R)
                if pair is not None:
                    pairs[(layer, proj)] = (pair[0].to(self.dtype), pair[1].to(self.dtype))
        self.num_disk_loads += 1
        return pairs, adapter

    def _keep_on_host(self, name: str, pairs: Pairs) -> None:
        self.host[name] = pairs
        self.host.move_to_end(name)
        while len(self.host) > self.config.max_cpu_loras:  # drop the LRU one not in a slot
            victim = next(n for n in self.host if n not in self.slot_of)
            del self.host[victim]

    def _host_copy(self, name: str) -> Pairs:
        if name not in self.host:
            pairs, _ = self._read(name, self.registry[name].path)
            self._keep_on_host(name, pairs)
        self.host.move_to_end(name)
        return self.host[name]

    # --- slots ----------------------------------------------------------------------------------
    def activate(self, name: str, keep: set[str]) -> int:
        """`name`'s slot, loading it into a free or the LRU slot outside `keep` if needed."""
        if name in self.slot_of:
            self.slot_of.move_to_end(name)
            return self.slot_of[name]
        used = set(self.slot_of.values())
        free = [s for s in range(1, self.config.max_loras + 1) if s not in used]
        if free:
            slot = free[0]
        else:  # evict: the least recently used adapter this step does not need
            victim = next(n for n in self.slot_of if n not in keep)
            slot = self.slot_of.pop(victim)
        pairs = self._host_copy(name)
        for layer in range(self.n_layer):
            for proj in FUSED:
                A, B = self.A[layer][proj][slot], self.B[layer][proj][slot]
                pair = pairs.get((layer, proj))
                if pair is None:
                    A.zero_(), B.zero_()
                else:
                    A.copy_(pair[0]), B.copy_(pair[1])
        self.scales[slot] = self.registry[name].scale
        self.slot_of[name] = slot
        self.num_slot_loads += 1
        return slot

    def plan(self, seqs, num_tokens: list[int]) -> LoRAStep | None:
        """This step's rows -> slots (rows laid out as ModelRunner.prepare lays them out);
        None when no row uses an adapter (the forward pass then skips LoRA entirely).

        Few distinct adapters: one group per adapter (all its rows, prefill and decode).
        More than GROUPED_MAX: each prefill chunk is a group of its own (SGMV) and the decode
        rows are gathered into one batched matmul (BGMV), so the op count stays flat."""
        names = {s.lora_name for s in seqs} - {None}
        if not names:
            return None
        if len(names) > self.config.max_loras:  # the scheduler's check failed: a bug
            raise RuntimeError(f"{len(names)} adapters in one step > max_loras")
        slot = {n: self.activate(n, names) for n in names}
        as_t = lambda v: torch.tensor(v, dtype=torch.long, device=self.device)  # noqa: E731
        slots = as_t([slot.get(s.lora_name, 0) for s in seqs])  # (B,) per sequence; 0: base
        ntok = as_t(num_tokens)  # (B,)
        scales = self.scales.tolist()  # once per step: the ops take Python floats
        decode = (ntok == 1) & (slots != 0)  # (B,) sequences decoding with an adapter
        prefill = (ntok > 1) & (slots != 0)
        counts = (int(decode.sum()), int(ntok[prefill].sum()))
        if len(names) <= GROUPED_MAX:
            row_slot = torch.repeat_interleave(slots, ntok)  # (N,)
            groups = [g for g in groups_of(row_slot, scales) if g[0] != 0]
            return LoRAStep(groups, None, *counts)
        starts = torch.cumsum(ntok, 0) - ntok  # (B,) each sequence's first row
        groups = [
            (s, slice(a, a + n), scales[s])
            for a, n, s in zip(*(t[prefill].tolist() for t in (starts, ntok, slots)))
        ]  # a loop over this step's prefill chunks (few), not over rows
        return LoRAStep(groups, (starts[decode], slots[decode]), *counts)

    # --- the forward pass -----------------------------------------------------------------------
    def add_delta(
        self, layer: int, proj: str, x: torch.Tensor, y: torch.Tensor, step: LoRAStep
    ) -> torch.Tensor:
        """y += s * (x A) B for every row of the step, in place: x (N, in), y (N, out)."""
        A, B = self.A[layer][proj], self.B[layer][proj]
        add_grouped(y, x, A, B, step.groups)
        if step.gather is not None:
            rows, slots = step.gather  # (Nd,) each
            d = bgmv(x.index_select(0, rows).to(A.dtype), A, B, self.scales, slots)  # (Nd, out)
            y.index_add_(0, rows, d.to(y.dtype))
        return y

    def delta(self, layer: int, proj: str, x: torch.Tensor, step: LoRAStep) -> torch.Tensor:
        """s * (x A) B for every row of the step: (N, in) -> (N, out), zero for base rows."""
        out = x.new_zeros(x.shape[0], self.B[layer][proj].shape[-1])
        return self.add_delta(layer, proj, x, out, step)


# --- the engine's hooks (LLMEngine.__init__ and make_sequence) -----------------------------------
def attach_lora(engine) -> LoRAManager | None:
    """Give `engine` its LoRAManager (config.lora), shared with its runner and scheduler."""
    cfg = engine.config.lora
    if cfg is None:
        return None
    r = engine.runner
    manager = r.lora = LoRAManager(cfg, r.cfg, r.device, r.dtype)
    engine.scheduler.config.max_loras = cfg.max_loras
    return manager


def bind_lora(manager: LoRAManager | None, seq, name: str | None) -> None:
    """Give `seq` its adapter and fold the adapter into its prefix-cache salt."""
    if name is not None and (manager is None or name not in manager.registry):
        known = sorted(manager.registry) if manager else "none: LoRA is off"
        raise ValueError(f"no LoRA adapter named {name!r} is loaded (loaded: {known})")
    if manager is not None:
        seq.lora_name = name
        seq.cache_salt = manager.cache_salt(seq.cache_salt, name)
