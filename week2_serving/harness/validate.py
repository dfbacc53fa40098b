"""Check the harness against vLLM's own benchmark: same server, same workload, side by side.

    python -m week2_serving.harness.validate                    # serves runs/week1/hf-model on vLLM CPU
    python -m week2_serving.harness.validate --model org/name --offline   # a hub id from the hub cache

Starts vLLM on the model, measures its saturated request rate (one run of ours, every request
sent at once under the concurrency cap), warms it up with one untimed paced run (below), and,
each round, writes one prompt file (random token
ids decoded to text) that both tools read: `vllm bench serve` (from vLLM's venv, its `custom`
dataset, no chat template, no shuffle) and our harness (its `file` workload). Both send the
same texts, the same output lengths with ignore_eos, and the same sampling (greedy: without
`--temperature 0` vllm bench sends no temperature and the server samples at its default, which
is another workload), with arrivals evenly spaced at 1.5x the saturated rate under the same cap
(`rate_share`): the server runs saturated, as with everything sent at once, but without the
opening burst, whose 32 simultaneous prefills would make most of the mean TTFT and depend on
how fast each client opens its connections.
The server runs without prefix caching (the second tool would hit the first's prompts), its
model worker on its own core(s), its other processes free, and both clients on the last core.
Rounds alternate who goes first; mean TTFT, mean TPOT and output throughput are compared as the
median over rounds, and every round is kept, with each client's own CPU seconds. Then a second
independent tool, guidellm (guidellm_check.py), runs at two constant rates (12.5% and 25% of the
saturated rate) on one more prompt file, and ours at the same rates at the same time; its mean inter-token
latency is token-weighted, so ours is compared in the same weighting (guidellm_check.py). Writes runs/week2/validate/results.json.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common.cli import parse
from common.hub import hub_env, is_offline, resolve_model
from common.procs import sigterm_as_interrupt
from common.results import get_logger, run_dir, runs_root, save_results
from common.server import VLLM_PYTHON, free_port
from common.timing import environment
from week2_serving.harness import bench, guidellm_check
from week2_serving.harness.launch import (
    clients_apart,
    launch,
    lower_client_priority,
)
from week2_serving.harness.workloads import random_requests

log = get_logger("week2.validate")

# `vllm bench serve` without the console script (it fails in the CPU build): build its parser
# and call its main, as the CLI does.
VLLM_BENCH = (
    "import sys\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)
COMPARED = ("mean_ttft_ms", "mean_tpot_ms", "output_throughput")


@dataclass
class ValidateConfig:
    """Our harness against `vllm bench serve`: same vLLM server, same prompts, side by side."""

    model: str | None = None  # HF folder or hub id (none: runs/week1/hf-model)
    num_prompts: int = 128  # requests per tool per round
    input_len: int = 256  # mean prompt tokens
    output_len: int = 128  # mean output tokens (ignore_eos: exactly these)
    max_concurrency: int = 32  # requests in flight, both tools
    # lengths uniform in [len*(1-r), len*(1+r)]: with equal lengths every wave of `concurrency`
    # streams ends on the same step and the next wave's TTFT depends on how fast the client
    # turns finished streams into new requests (see the README)
    range_ratio: float = 0.5
    rounds: int = 3  # each tool runs this many times, alternating; the medians are compared
    # arrivals, evenly spaced, at this multiple of the saturated request rate (measured first by
    # one run with every request sent at once); above 1 the concurrency cap still binds, so it
    # is the saturated load without its opening burst. inf: all at once (the burst)
    rate_share: float = 1.5
    tolerance: float = 0.10  # relative difference of the medians counted as agreement
    offline: bool | None = None  # a hub id must be cached (none: HF_HUB_OFFLINE decides)
    # guidellm (a second tool) and ours, both at once, each at these shares of the saturated
    # request rate (the server serves both: twice the share); empty: skipped
    guidellm_rate_shares: tuple[float, float] = (0.125, 0.25)
    guidellm_prompts: int = 48  # requests per rate, each tool, each round
    # rounds of both tools at both rates (side by side); medians compared: with three, one
    # round's outlier (a client delayed on the shared core) does not decide the comparison
    guidellm_rounds: int = 3
    # the clients' niceness: on the core they share with the server's API and engine processes
    # they yield to the server, so what is measured is the server, not the clients' contention
    client_nice: int = 10

    def __post_init__(self) -> None:
        for name in (
            "num_prompts",
            "input_len",
            "output_len",
            "max_concurrency",
            "rounds",
            "guidellm_prompts",
            "guidellm_rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"range_ratio={self.range_ratio} must be in [0, 1)")
        if not self.rate_share > 0:  # NaN fails this too
            raise ValueError(f"rate_share={self.rate_share} must be > 0 (inf: all at once)")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance={self.tolerance} must be > 0")
        if type(self.client_nice) is not int or not 0 <= self.client_nice <= 19:
            raise ValueError(f"client_nice={self.client_nice!r} must be an integer in 0..19")


def model_folder(cfg: ValidateConfig) -> str:
    """The model's local folder (a hub id resolved to its snapshot), so the server, vLLM's
    benchmark and ours all read the same files."""
    if cfg.model is None:
        return str(runs_root() / "week1" / "hf-model")
    return str(resolve_model(cfg.model, cfg.offline))


def write_prompts(path: Path, tokenizer, cfg: ValidateConfig, seed: int) -> Path:
    """One JSONL row per request, in the keys both tools read (ours: output_len, vllm's
    custom dataset: output_tokens)."""
    reqs = random_requests(
        tokenizer, cfg.num_prompts, cfg.input_len, cfg.output_len, cfg.range_ratio, seed=seed
    )
    with open(path, "w", encoding="utf-8") as f:
        for r in reqs:
            text = tokenizer.decode(r.prompt)
            f.write(
                json.dumps(
                    {
                        "prompt": text,
                        "output_len": r.output_len,
                        "output_tokens": r.output_len,
                        "output_tokens_count": r.output_len,  # guidellm's column
                    }
                )
                + "\n"
            )
    return path


def guidellm_part(
    url: str, model_dir: str, saturated: float, cfg: ValidateConfig, out: Path
) -> dict:
    """guidellm at two constant rates (shares of the saturated rate) vs ours, same prompts."""
    if not cfg.guidellm_rate_shares:
        return {"skipped": "no rates asked"}
    rates = [round(share * saturated, 3) for share in cfg.guidellm_rate_shares]
    tokenizer = bench.load_tokenizer(model_dir)
    rows_cfg = replace(cfg, num_prompts=cfg.guidellm_prompts)
    prompts = write_prompts(out / "prompts-guidellm.jsonl", tokenizer, rows_cfg, seed=1000)
    result = guidellm_check.run_check(
        url, "week1", model_dir, prompts, rates, cfg.guidellm_prompts, out, cfg.guidellm_rounds
    )
    return guidellm_check.verdict(result, cfg.tolerance)


def run_vllm_bench(
    url: str,
    model: str,
    tokenizer: str,
    prompts: Path,
    cfg: ValidateConfig,
    out_dir: Path,
    rate: float = math.inf,
) -> dict:
    name = "vllm_bench.json"
    # evenly spaced arrivals: a gamma shape so large that the gaps vary by about 1%, as ours
    shape = f"{guidellm_check.CONSTANT_BURSTINESS:g}"
    paced = [] if math.isinf(rate) else ["--request-rate", f"{rate:g}", "--burstiness", shape]
    cmd = [
        str(VLLM_PYTHON),
        "-c",
        VLLM_BENCH,
        "--backend",
        "openai",
        "--base-url",
        url,
        "--endpoint",
        "/v1/completions",
        "--model",
        model,
        "--tokenizer",
        tokenizer,
        "--dataset-name",
        "custom",
        "--dataset-path",
        str(prompts),
        "--skip-chat-template",
        "--disable-shuffle",
        "--custom-output-len",
        "-1",  # read each row's output_tokens (its default, 256, would override them)
        "--num-prompts",
        str(cfg.num_prompts),
        "--max-concurrency",
        str(cfg.max_concurrency),
        "--ignore-eos",
        *paced,
        # the same sampling as our harness sends (greedy): without it vllm bench sends no
        # temperature and the server samples at its default, a different workload
        "--temperature",
        "0",
        "--save-result",
        "--result-dir",
        str(out_dir),
        "--result-filename",
        name,
    ]
    before = _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads((out_dir / name).read_text())
    out["client_cpu_s"] = _children_cpu_s() - before
    return out


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ours_config(
    url: str, served: str, model_dir: str, prompts: Path, cfg: ValidateConfig, rate: float
):
    """Our harness on `prompts` as vllm bench runs them: same cap, same arrivals."""
    return bench.BenchConfig(
        base_url=url,
        model=served,
        tokenizer=model_dir,
        dataset_name="file",
        dataset_path=str(prompts),
        num_prompts=cfg.num_prompts,
        random_output_len=cfg.output_len,
        max_concurrency=cfg.max_concurrency,
        request_rate=rate,
        burstiness=guidellm_check.CONSTANT_BURSTINESS,
        num_warmups=1,  # as vllm bench's one "initial test run"
        save=False,
    )


def saturated_rate(url: str, served: str, model_dir: str, cfg: ValidateConfig, out: Path) -> float:
    """Requests/s with every request sent at once under the cap (one run of ours, on prompts of
    its own; it also warms the server up)."""
    tokenizer = bench.load_tokenizer(model_dir)
    prompts = write_prompts(out / "prompts-saturation.jsonl", tokenizer, cfg, seed=999)
    res = bench.main(ours_config(url, served, model_dir, prompts, cfg, math.inf))
    return res["request_throughput"]


def run_rounds(
    url: str, served: str, model_dir: str, cfg: ValidateConfig, out: Path, rate: float = math.inf
) -> list:
    """`cfg.rounds` rounds of both tools against the server at `url`, arrivals at `rate`
    requests/s (inf: all at once) under the concurrency cap; one row per round."""
    tokenizer = bench.load_tokenizer(model_dir)
    rows = []
    for r in range(cfg.rounds):
        prompts = write_prompts(out / f"prompts-round{r}.jsonl", tokenizer, cfg, seed=r)

        def theirs_run(prompts=prompts):
            with tempfile.TemporaryDirectory() as tmp:
                return run_vllm_bench(url, served, model_dir, prompts, cfg, Path(tmp), rate)

        def ours_run(prompts=prompts):
            before = time.process_time()
            res = bench.main(ours_config(url, served, model_dir, prompts, cfg, rate))
            res["client_cpu_s"] = time.process_time() - before
            return res

        # alternate who goes first, so neither tool always meets a freshly idle server
        if r % 2 == 0:
            theirs, ours = theirs_run(), ours_run()
        else:
            ours, theirs = ours_run(), theirs_run()
        row = {
            "round": r,
            "first": "vllm" if r % 2 == 0 else "ours",
            "vllm": {k: theirs[k] for k in COMPARED + ("completed", "client_cpu_s")},
            "ours": {
                k: ours[k]
                for k in COMPARED + ("completed", "failed", "client_cpu_s", "request_throughput")
            },
            "ours_errors": ours.get("errors", [])[:3],
        }
        log.info(
            "round %d: %s",
            r,
            {k: (round(row["vllm"][k], 2), round(row["ours"][k], 2)) for k in COMPARED},
        )
        rows.append(row)
    return rows


def summarize(rows: list, tolerance: float) -> dict:
    """Per metric: the median over rounds of each tool, and their relative difference."""
    summary = {}
    for k in COMPARED:
        v = statistics.median(r["vllm"][k] for r in rows)
        o = statistics.median(r["ours"][k] for r in rows)
        summary[k] = {
            "vllm_bench": v,
            "ours": o,
            "relative_diff": (o - v) / v,
            "within_tolerance": abs(o - v) / v <= tolerance,
        }
    return summary


def main(cfg: ValidateConfig) -> dict:
    folder = model_folder(cfg)
    out = run_dir("week2", "validate")
    # vLLM's model worker on its own core(s), its API and engine processes free, both clients
    # on the last core (launch.clients_apart: the README has the numbers behind it).
    with clients_apart() as place:
        env, layout = {**place["env"], **hub_env(is_offline(cfg.offline))}, place["layout"]
        # Prefix caching off: both tools send the same prompts, so with it on whichever tool
        # runs second in a round finds the other's prompts cached and its TTFT looks better.
        server = launch(
            "vllm",
            folder,
            port=free_port(),
            served_name="week1",
            log_dir=out,
            extra=["--no-enable-prefix-caching"],
            env=env,
        )
        with server:
            place["pin_clients"]()  # after the server started: it keeps its cores
            lower_client_priority(cfg.client_nice)  # and its priority
            tokenizer = bench.load_tokenizer(folder)
            saturated = saturated_rate(server.url, "week1", folder, cfg, out)
            rate = cfg.rate_share * saturated
            log.info("saturated: %.2f requests/s; the rounds send %.2f/s", saturated, rate)
            # one untimed run of ours as the rounds send: the paced load meets the server with
            # batch sizes the burst did not (the first paced run, whichever tool, is slower)
            warm = write_prompts(out / "prompts-warmup.jsonl", tokenizer, cfg, seed=998)
            bench.main(ours_config(server.url, "week1", folder, warm, cfg, rate))
            rows = run_rounds(server.url, "week1", folder, cfg, out, rate)
            second_tool = guidellm_part(server.url, folder, saturated, cfg, out)
    summary = summarize(rows, cfg.tolerance)
    results = {
        "summary": summary,
        "rounds": rows,
        "all_within_tolerance": all(s["within_tolerance"] for s in summary.values()),
        "saturated_request_rate": saturated,
        "request_rate": rate,  # the rounds' arrivals (inf: all at once)
        "guidellm": second_tool,
        "config": asdict(cfg),
        "model": folder,
        "cpu_layout": layout,
        "environment": environment(),
    }
    save_results("week2", "validate", results)
    for k, s in summary.items():
        log.info(
            "%-18s vllm bench %9.2f  ours %9.2f  diff %+.1f%%",
            k,
            s["vllm_bench"],
            s["ours"],
            100 * s["relative_diff"],
        )
    return results


def parse_args(argv: list[str] | None = None) -> ValidateConfig:
    return parse(ValidateConfig, argv, description=__doc__)


if __name__ == "__main__":
    cfg = parse_args()
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the server started is stopped
        main(cfg)
