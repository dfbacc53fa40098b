"""A model's shape from its Hugging Face `config.json`, and what that shape costs.

Everything here is arithmetic on a handful of numbers (hidden size, layers, heads, K/V heads,
MLP width, vocabulary): no weights are loaded. The names differ between families, so
`ModelShape.from_hf_config` reads the Llama / Qwen / Mistral names (`hidden_size`,
`num_hidden_layers`, ...) and GPT-2's (`n_embd`, `n_layer`, `n_head`, `n_inner`).

    >>> m = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
    ...                intermediate=14336, vocab=128256, tied=False)
    >>> m.kv_bytes_per_token("bfloat16")   # 2 (K and V) * 32 layers * 8 heads * 128 * 2 bytes
    131072
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# bytes per stored number; int4 packs two weights in a byte
DTYPE_BYTES: dict[str, float] = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}

DATA = Path(__file__).parent / "data"


def dtype_bytes(dtype: str) -> float:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def check_positive(name: str, value: object, integer: bool = False) -> None:
    """Refuse what is not a finite number > 0 (bools too: True is not a batch size)."""
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


@dataclass(frozen=True)
class ModelShape:
    """The numbers that set a decoder-only transformer's size and its KV cache."""

    hidden: int  # d_model
    layers: int
    heads: int  # query heads
    kv_heads: int  # K/V heads (= heads for MHA, fewer with GQA, 1 with MQA)
    head_dim: int
    intermediate: int  # MLP width
    vocab: int
    tied: bool  # the output projection shares the embedding matrix
    gated_mlp: bool = True  # SwiGLU: gate, up, down (3 matrices); GPT-2: up, down (2)
    qkv_bias: bool = False  # Qwen2 adds a bias to q, k, v
    all_bias: bool = False  # GPT-2: a bias on every Linear, LayerNorm with bias
    positions: int = 0  # learned position embeddings (GPT-2); 0 = rotary (none stored)
    name: str = ""

    def __post_init__(self) -> None:
        for f in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab"):
            check_positive(f, getattr(self, f), integer=True)
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )

    @classmethod
    def from_hf_config(cls, cfg: dict, name: str = "") -> ModelShape:
        """Read a `config.json` dict (Llama, Qwen2, Mistral, GPT-2 key names)."""
        if "n_embd" in cfg:  # GPT-2
            hidden, heads = cfg["n_embd"], cfg["n_head"]
            return cls(
                hidden=hidden,
                layers=cfg["n_layer"],
                heads=heads,
                kv_heads=heads,
                head_dim=hidden // heads,
                intermediate=cfg.get("n_inner") or 4 * hidden,
                vocab=cfg["vocab_size"],
                tied=cfg.get("tie_word_embeddings", True),
                gated_mlp=False,
                all_bias=True,
                positions=cfg.get("n_positions", 1024),
                name=name,
            )
        try:
            hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
            return cls(
                hidden=hidden,
                layers=cfg["num_hidden_layers"],
                heads=heads,
                kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or hidden // heads,
                intermediate=cfg["intermediate_size"],
                vocab=cfg["vocab_size"],
                tied=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
                name=name,
            )
        except KeyError as e:
            raise ValueError(
                f"config {name or '(dict)'} has no {e.args[0]!r}: expected Llama/Qwen/Mistral "
                "names (hidden_size, num_hidden_layers, ...) or GPT-2's (n_embd, n_layer, ...)"
            ) from None

    # ---- parameters -------------------------------------------------------------------------
    def layer_params(self) -> int:
        """One block: attention (q, k, v, o), the MLP, its two norms."""
        q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * (q_dim + 2 * kv_dim) + q_dim * self.hidden
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        norms = 2 * self.hidden * (2 if self.all_bias else 1)
        bias = q_dim + 2 * kv_dim if self.qkv_bias else 0
        if self.all_bias:
            bias = (q_dim + 2 * kv_dim) + self.hidden + self.intermediate + self.hidden
        return attn + mlp + norms + bias

    def embedding_params(self) -> int:
        """Token (and learned position) embeddings, plus the output head when not tied."""
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.positions * self.hidden + head

    def params(self) -> int:
        final_norm = self.hidden * (2 if self.all_bias else 1)
        return self.layers * self.layer_params() + self.embedding_params() + final_norm

    def matmul_params(self) -> int:
        """Weights that multiply every token: the blocks and the output head (the embedding
        lookup is a gather, no FLOPs; a tied head still multiplies)."""
        return self.layers * self.layer_params() + self.vocab * self.hidden

    def weight_bytes(self, dtype: str = "bfloat16") -> float:
        return self.params() * dtype_bytes(dtype)

    # ---- KV cache ---------------------------------------------------------------------------
    def kv_bytes_per_token(self, dtype: str = "bfloat16", tp: int = 1) -> float:
        """K and V of every layer for one token, on one of `tp` GPUs.

        Tensor parallelism splits the K/V heads across GPUs; with more GPUs than K/V heads
        each GPU keeps a copy of one head (vLLM replicates them)."""
        check_positive("tp", tp, integer=True)
        heads_here = max(self.kv_heads // tp, 1)
        return 2 * self.layers * heads_here * self.head_dim * dtype_bytes(dtype)

    # ---- FLOPs ------------------------------------------------------------------------------
    def flops_per_token(self, context: float = 0) -> float:
        """Forward FLOPs for one token attending to `context` earlier tokens.

        2 per weight (a multiply and an add) plus attention: q·K over the context and
        p·V, 2 FLOPs each per query-head dimension per context position."""
        attn = 4 * self.layers * self.heads * self.head_dim * context
        return 2 * self.matmul_params() + attn


def shipped_models() -> dict[str, Path]:
    """The configs shipped with the lab, by short name (e.g. `llama-3.1-8b`)."""
    return {p.stem: p for p in sorted((DATA / "models").glob("*.json"))}


def load_config(name: str) -> tuple[dict, str]:
    """`config.json` as a dict from a shipped short name, a path (file or folder) or a hub id."""
    shipped = shipped_models()
    key = name.lower().split("/")[-1].removesuffix(".json")
    if name in shipped or key in shipped:
        path = shipped[name if name in shipped else key]
        return json.loads(path.read_text()), path.stem
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return json.loads(path.read_text()), str(path)
    if name.count("/") == 1 and not path.exists():
        from huggingface_hub import hf_hub_download  # only for a hub id

        try:
            return json.loads(Path(hf_hub_download(name, "config.json")).read_text()), name
        except Exception as e:  # offline, private, misspelt: say what to do
            raise ValueError(
                f"could not fetch config.json of {name!r} from the hub ({type(e).__name__}); "
                f"pass a local config.json or one of the shipped: {', '.join(shipped)}"
            ) from None
    raise ValueError(
        f"no config {name!r}: give a config.json path, a model folder, a hub id or one of "
        f"{', '.join(shipped)}"
    )


def load_shape(name: str) -> ModelShape:
    cfg, label = load_config(name)
    return ModelShape.from_hf_config(cfg, name=label)
