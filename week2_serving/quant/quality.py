"""Quality of the quantized variants as vLLM serves them: held-out perplexity and greedy agreement.

    python -m week2_serving.quant.quality           # after week2_serving.quant.quantize, ~5 min
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

Each variant is served at the dtype vLLM's CPU build needs for it on this CPU (common.cpu):
int4-awq always in bfloat16 (vLLM's AWQ kernels take 16-bit activations), int8-w8a8 in
bfloat16 on CPUs with AMX tiles (its AMX kernel takes 16-bit activations) and float32
elsewhere. Like is compared with like: every quantized variant is compared with the
unquantized weights served at the same dtype (fp32, or the bf16 control), so 4-bit weights
are not blamed for bf16 arithmetic; each row says its dtype and what it was compared with.
Writes runs/week2/quant-quality/results.json; a variant that fails to load or answer is
recorded with its error, and the others go on.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from common.cpu import CpuCaps, cpu_caps, vllm_cpu_dtype
from common.hub import add_offline_arg, hub_env, is_offline, resolve_model
from common.results import get_logger, read_json, runs_root, save_results
from common.server import ServerError
from common.timing import environment
from week2_serving.harness.launch import launch
from week2_serving.quant.quantize import token_windows

log = get_logger("week2.quant_quality")

REFERENCE = "fp32"
# variant -> the quantization of its weights (common.cpu's names; None = unquantized) and the
# dtype it is served at: fixed for the two unquantized ones, else decided for this CPU
VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "fp32": (None, "float32"),  # the reference
    "bf16": (None, "bfloat16"),  # control: unquantized weights, bf16 arithmetic
    "int8-w8a8": ("int8-w8a8", None),  # int8 matmuls; bf16 or fp32 around them (see above)
    "int4-awq": ("awq", None),  # 4-bit weights, 16-bit activations
}
# the unquantized variant served at each dtype: what a quantized variant is compared with
UNQUANTIZED_AT = {"float32": "fp32", "bfloat16": "bf16"}


def serve_dtype(variant: str, caps: CpuCaps | None = None, cuda: bool = False) -> str:
    """The `--dtype` a variant is served at; quantized ones on a GPU: vLLM's 'auto'."""
    quant, fixed = VARIANTS[variant]
    if fixed:
        return fixed
    return "auto" if cuda else vllm_cpu_dtype(quant, caps or cpu_caps())


def compared_with(variant: str, dtype: str, ok: set[str]) -> str:
    """The unquantized variant served at `dtype` if it ran (`ok`), else the fp32 reference."""
    same = UNQUANTIZED_AT.get(dtype)
    return same if same in ok and VARIANTS[variant][0] is not None else REFERENCE


# Quality servers skip torch.compile (start-up ~30 s instead of ~60 s on 2 cores); the speed
# numbers come from the sweep, whose servers are compiled as usual.
EAGER = ["--enforce-eager"]


# ---- the metrics (pure functions, unit-tested) ----


def prompt_token_logprobs(prompt_ids: list[int], prompt_logprobs: list[dict | None]) -> list[float]:
    """log p(prompt[i] | prompt[:i]) for i ≥ 1 from vLLM's `prompt_logprobs` field.

    vLLM returns one entry per prompt token: None for the first (nothing predicts it), then a
    dict {token id (str): {"logprob": float, ...}} holding the actual token (plus top-k ones).
    """
    if len(prompt_logprobs) != len(prompt_ids):
        raise ValueError(
            f"{len(prompt_logprobs)} prompt_logprobs entries for {len(prompt_ids)} prompt tokens"
        )
    out = []
    for i, (tok, entry) in enumerate(zip(prompt_ids[1:], prompt_logprobs[1:]), start=1):
        if not entry or str(tok) not in entry:
            raise ValueError(f"prompt_logprobs[{i}] has no entry for the prompt token {tok}")
        value = entry[str(tok)]
        out.append(float(value["logprob"] if isinstance(value, dict) else value))
    return out


def prompt_top1(prompt_logprobs: list[dict | None]) -> list[int]:
    """The model's most likely token at each prompt position i ≥ 1 (teacher forcing: every
    position sees the true text before it), from `prompt_logprobs` requested with k ≥ 1."""
    out = []
    for i, entry in enumerate(prompt_logprobs[1:], start=1):
        top = [int(t) for t, v in (entry or {}).items() if isinstance(v, dict) and v["rank"] == 1]
        if not top:
            raise ValueError(
                f"prompt_logprobs[{i}] has no rank-1 token: request prompt_logprobs>=1"
            )
        out.append(top[0])
    return out


def perplexity(logprobs: list[list[float]]) -> dict:
    """exp(−mean log p) over every predicted token of every sequence (natural log)."""
    flat = [lp for seq in logprobs for lp in seq]
    if not flat:
        raise ValueError("perplexity needs at least one token log-probability, got none")
    bad = [lp for lp in flat if not math.isfinite(lp) or lp > 0]
    if bad:
        raise ValueError(f"log-probabilities must be finite and <= 0, got e.g. {bad[0]}")
    nll = -sum(flat) / len(flat)
    return {"perplexity": math.exp(nll), "mean_nll": nll, "tokens": len(flat)}


def greedy_agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How often `other`'s greedy tokens equal `reference`'s, position by position.

    token_agreement: matching positions / all positions (N prompts × M tokens);
    exact_match: fraction of prompts whose whole continuation is identical;
    mean_prefix_match: mean fraction of a continuation that is identical before the first
    difference (after one differing token the contexts differ, so later tokens often do too).
    """
    if len(reference) != len(other) or not reference:
        raise ValueError(f"need the same number of outputs, got {len(reference)} vs {len(other)}")
    matches = total = exact = 0
    prefix = 0.0
    for i, (ref, out) in enumerate(zip(reference, other)):
        if len(ref) != len(out) or not ref:
            raise ValueError(
                f"output {i}: {len(out)} tokens vs {len(ref)} in the reference (use ignore_eos)"
            )
        same = [a == b for a, b in zip(ref, out)]
        matches += sum(same)
        total += len(ref)
        exact += all(same)
        first_diff = same.index(False) if False in same else len(same)
        prefix += first_diff / len(ref)
    return {
        "token_agreement": matches / total,
        "exact_match": exact / len(reference),
        "mean_prefix_match": prefix / len(reference),
        "prompts": len(reference),
        "tokens_per_prompt": len(reference[0]),
    }


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


# ---- the table for the reports ----


def speed_by_variant(cells: list[dict], baseline: str | None) -> dict[str, dict[str, float]]:
    """Output tok/s per load for each variant's sweep server: a server named like the variant,
    and for fp32 the sweep's baseline server (the first one, serving the unquantized model)."""
    out: dict[str, dict[str, float]] = {}
    # loads in a readable order: random workloads by concurrency, then the others
    cells = sorted(
        cells,
        key=lambda c: (
            c.get("config", {}).get("dataset_name", "random") != "random",
            c.get("max_concurrency") or 0,
            c["load_name"],
        ),
    )
    for c in cells:
        name = REFERENCE if c.get("server_name") == baseline else c.get("server_name")
        out.setdefault(name, {})[c["load_name"]] = c["output_throughput"]
    return out


def quality_table(results: dict, speed: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: one row per variant — size, perplexity, agreement, and sweep speed."""
    from common.report import md_table

    speed = speed or {}
    loads = list(dict.fromkeys(load for v in speed.values() for load in v))
    rows = []
    variants = results["variants"]
    for name, v in variants.items():
        mb = f"{v['weight_bytes'] / 1e6:.1f}" if v.get("weight_bytes") else "?"
        secs = f"{v['quantize_seconds']:.0f}" if v.get("quantize_seconds") else "—"
        dtype = v.get("dtype", "?")
        if v.get("status") != "ok":
            err = v.get("error", "unknown error").splitlines()[0][:100]
            rows.append([name, dtype, mb, secs, f"failed: {err}", "", "", "", "", ""])
            continue
        g = v.get("greedy", {})
        base = v.get("compared_with", results.get("reference", REFERENCE))
        ref = variants.get(base, {})
        d_ppl = (
            f"{100 * (v['perplexity'] / ref['perplexity'] - 1):+.2f}% vs {base}"
            if ref.get("perplexity") and base != name
            else "reference"
        )
        rows.append(
            [
                name,
                dtype,
                mb,
                secs,
                f"{v['perplexity']:.2f} ({d_ppl})",
                f"{g['token_agreement']:.3f}" if g else "n/a",
                f"{g['mean_prefix_match']:.3f}" if g else "n/a",
                f"{v['top1_agreement']:.3f}" if "top1_agreement" in v else "n/a",
                f"{v['greedy_self_agreement']:.3f}" if "greedy_self_agreement" in v else "n/a",
                " / ".join(f"{speed[name][lo]:.0f}" for lo in loads if lo in speed.get(name, {}))
                or "—",
            ]
        )
    return md_table(
        [
            "variant",
            "served as",
            "weights MB",
            "quantize s",
            "val perplexity (vs unquantized, same dtype)",
            "greedy agreement",
            "identical prefix",
            "top-1 agreement (teacher-forced)",
            "greedy self-agreement",
            f"output tok/s ({' / '.join(loads) or 'sweep'})",
        ],
        rows,
    )


def report_section(week_dir: Path, cells: list[dict], baseline: str | None) -> str | None:
    """The quality-beside-speed table for a sweep report (None when quality was not measured)."""
    path = Path(week_dir) / "quant-quality" / "results.json"
    if not path.is_file():
        return None
    res = read_json(path)
    cfg = res.get("config", {})
    text = [
        quality_table(res, speed_by_variant(cells, baseline)),
        "",
        f"Perplexity: {res['eval']['windows']} windows of {cfg.get('eval_len')} tokens of the "
        f"week 1 val split. Each quantized variant is compared with the unquantized weights "
        "served at its own dtype ('served as': fp32, or the bf16 control). Greedy agreement: "
        f"{cfg.get('num_prompts')} prompts × {cfg.get('max_tokens')} greedy tokens, fraction "
        "equal to that reference position by position; identical prefix: mean fraction before "
        "the first difference. Top-1 agreement: same most-likely next token on the perplexity "
        "windows (no compounding). Greedy self-agreement: the greedy request twice on the same "
        "server (noise floor). Quality servers run with --enforce-eager; the speed columns come "
        "from this sweep. The dtypes are the ones vLLM's CPU build needs on this CPU "
        "(common/cpu.py): int4-awq always bfloat16, int8-w8a8 bfloat16 where AMX tiles exist.",
    ]
    return "\n".join(text)


# ---- the run ----


@dataclass
class QualityConfig:
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    model: str | None = None  # fp32 HF folder or hub id (default runs/week1/hf-model)
    quantized: str | None = None  # default runs/week2/quantized
    data: str | None = None  # token splits (default runs/week1/data-bpe)
    eval_len: int = 256  # tokens per perplexity window
    num_eval: int = 48  # perplexity windows (val split, consecutive from its start)
    num_prompts: int = 32  # greedy prompts
    prompt_len: int = 32
    max_tokens: int = 64  # greedy tokens per prompt
    name: str = "quant-quality"
    offline: bool | None = None  # True: a hub id must be cached, servers too; None: HF_HUB_OFFLINE

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
        if REFERENCE not in self.variants:
            raise ValueError(f"variants {self.variants} must include the reference {REFERENCE!r}")
        for k in ("eval_len", "num_eval", "num_prompts", "prompt_len", "max_tokens"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


def quantized_dir(cfg: QualityConfig) -> Path:
    return Path(cfg.quantized) if cfg.quantized else runs_root() / "week2" / "quantized"


def variant_dirs(cfg: QualityConfig) -> dict[str, Path]:
    model = (
        resolve_model(cfg.model, cfg.offline) if cfg.model else runs_root() / "week1" / "hf-model"
    )
    qdir = quantized_dir(cfg)
    return {v: model if v in ("fp32", "bf16") else qdir / v for v in cfg.variants}


def main(cfg: QualityConfig) -> dict:
    dirs = variant_dirs(cfg)
    data = Path(cfg.data) if cfg.data else runs_root() / "week1" / "data-bpe"
    eval_windows = token_windows(data, "val", cfg.num_eval, cfg.eval_len)
    prompts = [
        w[: cfg.prompt_len] for w in token_windows(data, "val", cfg.num_prompts, cfg.eval_len)
    ]
    out_dir = runs_root() / "week2" / cfg.name
    raw: dict[str, dict] = {}
    rows: dict[str, dict] = {}
    for name in tqdm(cfg.variants, desc="quality", unit="variant"):
        folder = dirs[name]
        dtype = serve_dtype(name, cuda=shutil.which("nvidia-smi") is not None)
        serve_args = [] if dtype == "auto" else ["--dtype", dtype]
        rows[name] = {"model": str(folder), "dtype": dtype, "serve_args": serve_args}
        if not (folder / "config.json").is_file():
            rows[name].update(status="error", error=_missing_error(name, folder, cfg))
            log.error("%s: %s", name, rows[name]["error"])
            continue
        t0 = time.perf_counter()
        try:
            with launch(
                "vllm",
                folder,
                extra=serve_args + EAGER,
                log_dir=out_dir,
                served_name=name,
                env=hub_env(is_offline(cfg.offline)),
            ) as srv:
                raw[name] = evaluate_server(srv.url, name, eval_windows, prompts, cfg.max_tokens)
            rows[name].update(status="ok", **perplexity(raw[name]["logprobs"]))
        except (ServerError, RuntimeError, httpx.HTTPError, ValueError, KeyError) as e:
            rows[name].update(status="error", error=f"{type(e).__name__}: {e}")
            log.error("%s failed: %s", name, str(e).splitlines()[0])
        rows[name]["seconds"] = time.perf_counter() - t0
    ok = {name for name, row in rows.items() if row["status"] == "ok"}
    for name, row in rows.items():
        row["compared_with"] = compared_with(name, row["dtype"], ok)
        ref = raw.get(row["compared_with"])
        if row["status"] == "ok" and ref is not None:
            row["greedy"] = greedy_agreement(ref["greedy"], raw[name]["greedy"])
            row["top1_agreement"] = greedy_agreement(ref["top1"], raw[name]["top1"])[
                "token_agreement"
            ]
        if row["status"] == "ok":
            row["greedy_self_agreement"] = greedy_agreement(
                raw[name]["greedy"], raw[name]["greedy_repeat"]
            )["token_agreement"]
            row["greedy_tokens"] = raw[name]["greedy"]  # kept to inspect where outputs diverge
            log.info(
                "%-10s perplexity %.3f  greedy agreement %s  teacher-forced top-1 agreement %s",
                name,
                row["perplexity"],
                f"{row['greedy']['token_agreement']:.3f}" if "greedy" in row else "n/a",
                f"{row['top1_agreement']:.3f}" if "top1_agreement" in row else "n/a",
            )
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
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    p.add_argument(
        "--model", default=None, help="fp32 HF folder or hub id (default runs/week1/hf-model)"
    )
    p.add_argument("--quantized", default=None, help="default runs/week2/quantized")
    p.add_argument("--data", default=None, help="token splits (default runs/week1/data-bpe)")
    p.add_argument("--eval-len", type=int, default=256)
    p.add_argument("--num-eval", type=int, default=48)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    add_offline_arg(p)
    a = p.parse_args(argv)
    return QualityConfig(
        [v for v in a.variants.split(",") if v],
        a.model,
        a.quantized,
        a.data,
        a.eval_len,
        a.num_eval,
        a.num_prompts,
        a.prompt_len,
        a.max_tokens,
        offline=a.offline,
    )


if __name__ == "__main__":
    main(parse_args())
