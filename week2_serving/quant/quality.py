"""Quality of the quantized variants as vLLM serves them: held-out perplexity and greedy agreement.

    python -m week2_serving.quant.quality           # after week2_serving.quant.quantize
    python -m week2_serving.quant.quality --variants fp32,int4-awq --num-prompts 8
    python -m week2_serving.quant.quality --model org/name --offline   # fp32 from the hub cache

For each variant (fp32 = the week 1 export, a bf16 control = the same weights served in
bfloat16, and the quantized folders from runs/week2/quantized/), start real vLLM on it and ask:
- **perplexity** on the week 1 *val* split (the same windows of `eval_len` tokens for every
  variant): vLLM's `prompt_logprobs` gives log p(token | the tokens before it) for every prompt
  token; perplexity = exp(−mean of those log-probabilities) over all predicted tokens;
- **greedy agreement**: `num_prompts` prompts (the first `prompt_len` tokens of val windows)
  continued greedily for `max_tokens` tokens (ignore_eos); the fraction of positions where the
  variant's token equals the fp32 model's, and how long the outputs stay identical. One early
  difference changes the context of every later token, so this number compounds;
- **teacher-forced top-1 agreement**: on the perplexity windows, how often the variant's most
  likely next token equals the fp32 model's when both see the same true text (no compounding);
- **greedy self-agreement**: the greedy request sent twice to the same server (the noise floor:
  1.0 when the server decodes deterministically).

Each variant is served at the dtype vLLM's CPU build needs for it on this CPU (common.cpu; the
variants, their dtypes and what each is compared with are the table in variants.py):
int4-awq always in bfloat16 (vLLM's AWQ kernels take 16-bit activations), int8-w8a8 in
bfloat16 on CPUs with AMX tiles (its AMX kernel takes 16-bit activations) and float32
elsewhere. Like is compared with like: every quantized variant is compared with the
unquantized weights served at the same dtype (fp32, or the bf16 control), so 4-bit weights
are not blamed for bf16 arithmetic; each row says its dtype and what it was compared with.
Writes runs/week2/quant-quality/results.json; a variant that fails to load or answer is
recorded with its error, and the others go on.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from common.cli import parse
from common.hub import hub_env, is_offline, resolve_model
from common.procs import sigterm_as_interrupt
from common.results import get_logger, read_json, runs_root, save_results
from common.server import ManagedServer, ServerError, mem_available_gib, servers_at_once
from common.timing import environment
from week2_serving.harness.launch import launch
from week2_serving.quant.metrics import (
    greedy_agreement,
    perplexity,
    prompt_token_logprobs,
    prompt_top1,
)
from week2_serving.quant.shared import token_windows
from week2_serving.quant.variants import (
    REFERENCE,
    VARIANTS,
    check_names,
    compared_with,
    serve_args,
    serve_dtype,
)

log = get_logger("week2.quant_quality")

# Quality servers skip torch.compile (they start faster); the speed numbers come from the
# sweep, whose servers are compiled as usual.
EAGER = ["--enforce-eager"]


@dataclass
class QualityConfig:
    """Serve each variant on vLLM, measure its quality (python -m week2_serving.quant.quality)."""

    variants: list[str] = field(
        default_factory=lambda: list(VARIANTS),
        metadata={
            "help": f"variants to measure, space- or comma-separated, {REFERENCE} among them: "
            f"{list(VARIANTS)}"
        },
    )
    model: str | None = None  # fp32 HF folder or hub id; None: runs/week1/hf-model
    quantized: str | None = None  # the quantized variants' folder; None: runs/week2/quantized
    data: str | None = None  # folder with val.bin; None: runs/week1/data-bpe
    eval_len: int = 256  # tokens per perplexity window
    num_eval: int = 48  # perplexity windows (val split, consecutive from its start)
    num_prompts: int = 32  # greedy prompts
    prompt_len: int = 32  # tokens per greedy prompt (the start of a val window)
    max_tokens: int = 64  # greedy tokens per prompt
    name: str = "quant-quality"  # run name: results go to runs/week2/<name>/
    offline: bool | None = None  # True: never ask the hub, servers too; None: HF_HUB_OFFLINE

    def __post_init__(self) -> None:
        self.variants = check_names(self.variants)
        if REFERENCE not in self.variants:
            raise ValueError(f"variants {self.variants} must include the reference {REFERENCE!r}")
        for k in ("eval_len", "num_eval", "num_prompts", "prompt_len", "max_tokens"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


# ---- asking a server ----


def completions(url: str, payload: dict, timeout_s: float = 600.0) -> list[dict]:
    """One non-streaming /v1/completions call with a batch of prompts; choices in prompt order."""
    r = httpx.post(url + "/v1/completions", json=payload, timeout=timeout_s)
    if r.status_code != 200:
        raise RuntimeError(f"/v1/completions returned HTTP {r.status_code}: {r.text[:500]}")
    return sorted(r.json()["choices"], key=lambda c: c["index"])


def evaluate_server(
    url: str, model: str, eval_windows: list[list[int]], prompts: list[list[int]], max_tokens: int
) -> dict:
    """Per-window token log-probs and top-1 tokens of the eval windows, and the greedy
    continuations of the prompts."""
    choices = completions(
        url,
        {"model": model, "prompt": eval_windows, "max_tokens": 1, "prompt_logprobs": 1},
    )
    logprobs = [
        prompt_token_logprobs(w, c["prompt_logprobs"])
        for w, c in zip(eval_windows, choices, strict=True)
    ]
    top1 = [prompt_top1(c["prompt_logprobs"]) for c in choices]
    greedy_payload = {
        "model": model,
        "prompt": prompts,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    greedy = [c["token_ids"] for c in completions(url, greedy_payload)]
    # the same request again: how deterministic is greedy decoding on this server (noise floor)
    repeat = [c["token_ids"] for c in completions(url, greedy_payload)]
    return {"logprobs": logprobs, "top1": top1, "greedy": greedy, "greedy_repeat": repeat}


# ---- the run ----


def quantized_dir(cfg: QualityConfig) -> Path:
    return Path(cfg.quantized) if cfg.quantized else runs_root() / "week2" / "quantized"


def variant_dirs(cfg: QualityConfig) -> dict[str, Path]:
    """The folder each variant is served from: the fp32 model, or its quantized folder."""
    model = (
        resolve_model(cfg.model, cfg.offline) if cfg.model else runs_root() / "week1" / "hf-model"
    )
    qdir = quantized_dir(cfg)
    return {v: qdir / v if VARIANTS[v].quantized else model for v in cfg.variants}


def variant_server(
    name: str, folder: Path, cfg: QualityConfig, cuda: bool
) -> tuple[dict, ManagedServer | None]:
    """One variant's row and its server, not started (None, with the row's error, when the
    variant was never made or its server cannot be made)."""
    serve = serve_args(name, cuda=cuda)
    row = {"model": str(folder), "dtype": serve_dtype(name, cuda=cuda), "serve_args": serve}
    if not (folder / "config.json").is_file():
        row.update(status="error", error=_missing_error(name, folder, cfg))
        log.error("%s: %s", name, row["error"])
        return row, None
    try:
        server = launch(
            "vllm",
            folder,
            extra=serve + EAGER,
            log_dir=runs_root() / "week2" / cfg.name,
            served_name=name,
            env=hub_env(is_offline(cfg.offline)),
        )
    except (ServerError, ValueError) as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}")
        log.error("%s failed: %s", name, str(e).splitlines()[0])
        return row, None
    return row, server


def measure_variant(
    name: str, row: dict, server: ManagedServer | None, texts: tuple[list, list], cfg: QualityConfig
) -> tuple[dict, dict | None]:
    """Start (or wait for) the variant's server and ask it the eval windows and prompts: (its
    row, what it answered)."""
    if server is None:
        return row, None
    t0 = time.perf_counter()
    got = None
    try:
        with server as srv:
            got = evaluate_server(srv.url, name, *texts, cfg.max_tokens)
        row.update(status="ok", **perplexity(got["logprobs"]))
    except (ServerError, RuntimeError, httpx.HTTPError, ValueError, KeyError) as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}")
        log.error("%s failed: %s", name, str(e).splitlines()[0])
    row["seconds"] = time.perf_counter() - t0
    return row, got


def measure_all(
    dirs: dict[str, Path], texts: tuple[list, list], cfg: QualityConfig, cuda: bool
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every variant's row and answers. Servers start in groups (`servers_at_once`: two where
    memory allows): a group's servers are spawned together, then used one at a time."""
    rows: dict[str, dict] = {}
    raw: dict[str, dict] = {}
    at_once = servers_at_once(mem_available_gib(), most=2)  # 4 variants: two pairs
    names = list(cfg.variants)
    with tqdm(total=len(names), desc="quality", unit="variant") as bar:
        for k in range(0, len(names), at_once):
            made = {n: variant_server(n, dirs[n], cfg, cuda) for n in names[k : k + at_once]}
            try:
                for n, (row, server) in made.items():
                    if server is not None and len(made) > 1:
                        try:
                            server.spawn()
                        except ServerError as e:
                            row.update(status="error", error=f"ServerError: {e}")
                            made[n] = (row, None)
                for n, (row, server) in made.items():
                    rows[n], got = measure_variant(n, row, server, texts, cfg)
                    if got is not None:
                        raw[n] = got
                    bar.update()
            finally:  # stopped on every exit, the group's unused ones too
                for _row, server in made.values():
                    if server is not None:
                        server.stop()
    return rows, raw


def compare_variants(rows: dict[str, dict], raw: dict[str, dict]) -> None:
    """Add to each row what it was compared with, its agreements, and its self-agreement."""
    ok = {name for name, row in rows.items() if row["status"] == "ok"}
    for name, row in rows.items():
        row["compared_with"] = compared_with(name, row["dtype"], ok)
        if row["status"] != "ok":
            continue
        ref = raw.get(row["compared_with"])
        if ref is not None:
            row["greedy"] = greedy_agreement(ref["greedy"], raw[name]["greedy"])
            top1 = greedy_agreement(ref["top1"], raw[name]["top1"])
            row["top1_agreement"] = top1["token_agreement"]
        repeat = greedy_agreement(raw[name]["greedy"], raw[name]["greedy_repeat"])
        row["greedy_self_agreement"] = repeat["token_agreement"]
        row["greedy_tokens"] = raw[name]["greedy"]  # kept to inspect where outputs diverge
        log.info(
            "%-10s perplexity %.3f  greedy agreement %s  teacher-forced top-1 agreement %s",
            name,
            row["perplexity"],
            f"{row['greedy']['token_agreement']:.3f}" if "greedy" in row else "n/a",
            f"{row['top1_agreement']:.3f}" if "top1_agreement" in row else "n/a",
        )


def main(cfg: QualityConfig) -> dict:
    """Measure every variant of `cfg`; write and return runs/week2/<cfg.name>/results.json."""
    dirs = variant_dirs(cfg)
    data = Path(cfg.data) if cfg.data else runs_root() / "week1" / "data-bpe"
    eval_windows = token_windows(data, "val", cfg.num_eval, cfg.eval_len)
    windows = token_windows(data, "val", cfg.num_prompts, cfg.eval_len)
    prompts = [w[: cfg.prompt_len] for w in windows]
    cuda = shutil.which("nvidia-smi") is not None
    rows, raw = measure_all(dirs, (eval_windows, prompts), cfg, cuda)
    compare_variants(rows, raw)
    sizes = _sizes(dirs, quantized_dir(cfg))
    for name, row in rows.items():
        row.update(sizes.get(name, {}))
    results = {
        "reference": REFERENCE,
        "variants": rows,
        "config": asdict(cfg),
        "eval": {"split": "val", "data": str(data), "windows": len(eval_windows)},
        "environment": environment(),
    }
    save_results("week2", cfg.name, results)
    return results


def _missing_error(name: str, folder: Path, cfg: QualityConfig) -> str:
    """Why a variant folder is missing: the quantizer's recorded error if there is one."""
    path = quantized_dir(cfg) / "results.json"
    if path.is_file():
        rec = read_json(path).get("variants", {}).get(name, {})
        if rec.get("status") == "error":
            return f"not produced: {rec.get('error', '?')}"
    return f"{folder}/config.json not found: run python -m week2_serving.quant.quantize"


def _sizes(dirs: dict[str, Path], qdir: Path) -> dict[str, dict]:
    """Weight bytes per variant, and quantize time from runs/week2/quantized/results.json."""
    out = {
        n: {"weight_bytes": sum(f.stat().st_size for f in d.glob("*.safetensors"))}
        for n, d in dirs.items()
    }
    if (qdir / "results.json").is_file():
        for name, rec in read_json(qdir / "results.json").get("variants", {}).items():
            if name in out and "quantize_seconds" in rec:
                out[name]["quantize_seconds"] = rec["quantize_seconds"]
    return out


def parse_args(argv: list[str] | None = None) -> QualityConfig:
    return parse(QualityConfig, argv, description=__doc__)


if __name__ == "__main__":
    cfg = parse_args()
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the servers started are stopped
        main(cfg)
