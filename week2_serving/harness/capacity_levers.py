"""Capacity per lever: the capacity study once for each server setting of a sweep, and our engine.

    python -m week2_serving.harness.capacity_levers                    # cpu.yaml's servers + engine
    python -m week2_serving.harness.capacity_levers --levers default no-prefix-caching engine
    python -m week2_serving.harness.capacity_levers --searches 3 --verify-runs 3

Each lever is one server start and one capacity study (capacity.py, same SLO and workload for
all), written to runs/week2/capacity-<lever>; the week 2 report puts every study in one table
(capacity, the checks at it and 1.25x, $ per 1M tokens) beside the SLO frontier plot. A lever
whose model folder is missing (a quantized variant not made) is skipped and said so. The
levers are the sweep config's `servers` (prefix caching off, INT8, INT4...) plus `engine`, the
week 2 engine on the sweep's model. `make week2` runs only the default study (time); this runs
the rest, about one default study's time per lever.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from common.cli import parse
from common.procs import sigterm_as_interrupt
from common.results import get_logger
from week2_serving.harness import capacity
from week2_serving.harness.cells import model_path
from week2_serving.harness.sweep_config import SweepConfig

log = get_logger("week2.capacity_levers")
ENGINE_LEVER = "engine"


@dataclass
class LeversConfig:
    """The capacity study for each lever of a sweep config (and our engine)."""

    sweep_config: str = "week2_serving/harness/configs/cpu.yaml"  # its servers are the levers
    levers: list[str] = field(default_factory=list)  # names to run (empty: all, engine too)
    slo: list[str] = field(default_factory=lambda: ["ttft_p99:500", "tpot_p99:50"])  # terms
    searches: int = 1  # per lever
    verify_runs: int = 1  # per lever, at the capacity and 1.25x


def lever_studies(cfg: LeversConfig) -> list[capacity.CapacityConfig]:
    """One CapacityConfig per lever asked for, in the sweep's order, our engine last; a lever
    whose model folder is missing is left out (logged)."""
    sweep = SweepConfig.from_yaml(cfg.sweep_config)
    base = capacity.CapacityConfig(
        slo=list(cfg.slo), searches=cfg.searches, verify_runs=cfg.verify_runs
    )
    known = [s["name"] for s in sweep.servers] + [ENGINE_LEVER]
    unknown = [name for name in cfg.levers if name not in known]
    if unknown:
        raise ValueError(f"levers {unknown} not in {cfg.sweep_config}: choose from {known}")
    out = []
    for s in sweep.servers:
        if cfg.levers and s["name"] not in cfg.levers:
            continue
        model = model_path(s.get("model", sweep.model))
        if Path(model).is_absolute() and not Path(model).exists():  # a folder not made
            log.warning("lever %s skipped: %s not found", s["name"], model)
            continue
        engine = s.get("engine", sweep.engine)
        out.append(
            replace(base, name=s["name"], engine=engine, model=model, server_args=list(s["args"]))
        )
    if not cfg.levers or ENGINE_LEVER in cfg.levers:
        out.append(replace(base, name=ENGINE_LEVER, engine="engine", model=model_path(sweep.model)))
    return out


def main(cfg: LeversConfig) -> dict:
    done = {}
    for study in lever_studies(cfg):
        log.info("lever %s: %s %s %s", study.name, study.engine, study.model, study.server_args)
        try:
            done[study.name] = capacity.main(study)["capacity"]
        except (RuntimeError, OSError, ValueError) as e:  # a server that would not start
            log.error("lever %s failed: %s", study.name, e)
            done[study.name] = f"failed: {e}"
    log.info("capacity per lever (req/s): %s", done)
    return done


if __name__ == "__main__":
    cfg = parse(LeversConfig, description=__doc__)
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: every server started is stopped
        main(cfg)
