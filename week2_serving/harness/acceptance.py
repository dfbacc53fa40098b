"""Issue 16's acceptance in one command: capacity, its checks, a second tool, multi-turn.

    python -m week2_serving.harness.acceptance                 # runs everything (vLLM CPU)
    python -m week2_serving.harness.acceptance --model DIR     # another week 1 export
    python -m week2_serving.harness.acceptance --only capacity multi-turn
    python -m week2_serving.harness.acceptance --read-only     # judge the results already there

Runs, on vLLM CPU with the week 1 model: (1) a capacity study with three searches and the
3-run checks at the capacity and at 1.25x it, every open-loop run 40 s of arrivals
(capacity.py --duration; runs/week2/capacity-acceptance);
(2) the multi-turn prefix study, cache on vs off (prefix_study.py); (3) validate with one round
of `vllm bench serve` and guidellm at two constant rates, three rounds of 80 requests per rate
and tool (validate.py, guidellm_check.py). Then
prints one line per acceptance item, PASS / FAIL / NOT RUN, and writes
runs/week2/acceptance/results.json. The exit status is 0 only when every item passed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import parse
from common.procs import sigterm_as_interrupt
from common.results import get_logger, read_json, runs_root, save_results
from week2_serving.harness import capacity, prefix_study, validate

log = get_logger("week2.acceptance")
PARTS = ("capacity", "multi-turn", "guidellm")


@dataclass
class AcceptanceConfig:
    """Run issue 16's acceptance checks and print pass / fail per item."""

    model: str | None = None  # week 1 HF folder (none: runs/week1/hf-model)
    only: list[str] = field(default_factory=lambda: list(PARTS))  # parts to run
    read_only: bool = False  # run nothing: judge the results files already written
    searches: int = 3  # capacity searches (their spread must be within `spread`)
    spread: float = 0.10  # (max - min) / median of the capacities found
    # seconds of arrivals per capacity probe and check run (rate x this many requests): long
    # enough for 1.25x the capacity to build a queue; shorter runs absorb the overload into a
    # larger batch and can meet the SLO above the rate a long run sustains
    duration: float = 40.0
    num_prompts: int = 200  # the saturated bracket run: this many requests at once
    max_probes: int = 8  # per capacity search
    # guidellm vs ours (side by side): rounds, and requests per rate and tool (more than
    # validate's default 64)
    guidellm_rounds: int = 3
    guidellm_prompts: int = 80

    def __post_init__(self) -> None:
        bad = [p for p in self.only if p not in PARTS]
        if bad:
            raise ValueError(f"--only {bad}: choose from {', '.join(PARTS)}")
        if self.searches < 2 or not 0 < self.spread < 1 or self.num_prompts < 1:
            raise ValueError("searches >= 2, spread in (0, 1) and num_prompts >= 1, please")
        if self.guidellm_rounds < 1 or self.guidellm_prompts < 1:
            raise ValueError(
                f"guidellm_rounds={self.guidellm_rounds} and guidellm_prompts="
                f"{self.guidellm_prompts} must be >= 1"
            )
        if not (math.isfinite(self.duration) and 0 < self.duration <= 3600):
            raise ValueError(f"duration={self.duration!r}: use seconds in (0, 3600]")


def run_parts(cfg: AcceptanceConfig) -> None:
    """The measurements, each writing its own results.json."""
    if "capacity" in cfg.only:
        capacity.main(
            capacity.CapacityConfig(
                name="acceptance",
                model=cfg.model,
                searches=cfg.searches,
                verify_runs=3,
                num_prompts=cfg.num_prompts,
                duration=cfg.duration,
                max_probes=cfg.max_probes,
            )
        )
    if "multi-turn" in cfg.only:
        prefix_study.main(
            prefix_study.PrefixStudyConfig(model=cfg.model, conversations=16, num_runs=3)
        )
    if "guidellm" in cfg.only:
        validate.main(
            validate.ValidateConfig(
                model=cfg.model,
                rounds=1,
                guidellm_rounds=cfg.guidellm_rounds,
                guidellm_prompts=cfg.guidellm_prompts,
            )
        )


def _read(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def judge(week: Path, spread: float) -> list[tuple[str, str, str]]:
    """(item, PASS | FAIL | NOT RUN, the numbers behind it) for every acceptance item."""
    out = []
    cap = _read(week / "capacity-acceptance" / "results.json")
    if cap is None or cap.get("capacity") is None:
        why = "no results" if cap is None else f"no capacity: {cap.get('why')}"
        out += [(item, "NOT RUN", why) for item in ("capacity reproduces", "check at it")]
        out.append(("check at 1.25x", "NOT RUN", why))
    else:
        caps, s = cap["capacities"], cap["spread_of_median"]
        ok = len(caps) >= 3 and s <= spread
        out.append(
            ("capacity reproduces", _v(ok), f"{caps} req/s: spread {s:.1%} (<= {spread:.0%})")
        )
        check = cap.get("verification") or {}
        for key, want, item in (("at", True, "check at it"), ("above", False, "check at 1.25x")):
            p = check.get(key)
            if p is None:
                out.append((item, "NOT RUN", "no verification"))
                continue
            shares = p["summary"]["shares"]
            out.append((item, _v(p["meets"] == want), f"{p['rate']:.3g} req/s: {shares}"))
    val = _read(week / "validate" / "results.json")
    g = (val or {}).get("guidellm") or {}
    if "rows" in g:
        diffs = {
            f"{r['rate']:g}": {
                k: f"{v['relative_diff']:+.1%}" for k, v in r.items() if isinstance(v, dict)
            }
            for r in g["rows"]
        }
        out.append(("guidellm agrees", _v(g["all_within_tolerance"]), str(diffs)))
    else:
        out.append(("guidellm agrees", "NOT RUN", g.get("skipped", "no validate results")))
    pre = _read(week / "prefix-study-vllm" / "results.json")
    if pre is None:
        out += [(i, "NOT RUN", "no results") for i in ("prefix hit rate > 0", "later turns faster")]
    else:
        c, last = prefix_study.checks(pre), pre["last_turn_ttft_ms"]
        out.append(
            ("prefix hit rate > 0", _v(c["hit_rate_on_positive"]), f"on {pre['hit_rate_on']}")
        )
        out.append(("later turns faster", _v(c["later_turns_lower"]), f"last turn ms {last}"))
    return out


def _v(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(cfg: AcceptanceConfig) -> int:
    if not cfg.read_only:
        run_parts(cfg)
    items = judge(runs_root() / "week2", cfg.spread)
    for item, verdict, detail in items:
        print(f"{verdict:8s} {item:22s} {detail}")
    save_results("week2", "acceptance", {"items": [list(i) for i in items]})
    return 0 if all(v == "PASS" for _, v, _ in items) else 1


if __name__ == "__main__":
    cfg = parse(AcceptanceConfig, description=__doc__)
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: every server started is stopped
        code = main(cfg)
    sys.exit(code)
