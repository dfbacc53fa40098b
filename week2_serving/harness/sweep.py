"""Sweep the serving levers: every server setting × every load setting, resumable.

    python -m week2_serving.harness.sweep week2_serving/harness/configs/cpu.yaml --dry-run  # what would run
    python -m week2_serving.harness.sweep week2_serving/harness/configs/cpu.yaml     # the sweep
    python -m week2_serving.report runs/week2/sweep-cpu                      # the one-page report

The YAML names an engine and a model, `servers` (flags for the server, and optionally another
`model` such as a quantized variant: each one restarts the server),
`loads` (BenchConfig fields: concurrency, rate, workload) and `bench` defaults. Each cell
writes runs/week2/sweep-<name>/<server>/<load>/results.json, or error.json if it failed; its
results carry the server's own counters for the cell (`server_metrics`: prefix-cache hit rate,
preemptions, from /metrics; "unavailable" where the server has none).

A cell is done only if its results.json carries the cell's current hash (engine, model, server
flags, load and bench settings: change any and the cell is stale), completed at least one
request, and its server was still up after it. Everything else (a server that did not start
or died, 0 requests completed, any error in the cell) is written to error.json with the end of
the server's log, and the sweep goes on; a rerun skips done cells and runs the rest, so an
interrupted sweep resumes where it stopped. `--dry-run` prints every cell and every problem
that would stop the real run on this machine, and starts nothing.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import build_parser, config_from_args
from common.procs import Terminated, sigterm_as_interrupt
from common.results import get_logger, write_json_atomic, write_results
from common.server import log_tail, mem_available_gib, servers_at_once
from week2_serving.harness import bench, server_metrics
from week2_serving.harness.cells import (
    Cell,
    by_server,
    cell_hash,
    cell_status,
    model_path,
    plan,
    resolve_model,
    sweep_dir,
)
from week2_serving.harness.launch import (
    Machine,
    check_model,
    detect_machine,
    launch,
    preflight,
    server_spec,
)
from week2_serving.harness.sweep_config import SweepConfig

__all__ = ["SweepConfig", "cell_hash", "dry_run", "main", "plan", "resolve_model", "run_sweep"]

log = get_logger("week2.sweep")
LOG_LINES = 30  # lines of the server's log kept in error.json


def save_cell(cell: Cell, res: dict) -> None:
    res.update(server_name=cell.server, load_name=cell.load, cell_hash=cell.hash)
    write_results(cell.folder / "results.json", res)
    (cell.folder / "error.json").unlink(missing_ok=True)  # an earlier failure, now rerun


def fail_cell(cell: Cell, error: str, info: dict, server: object | None) -> None:
    """error.json: which server, what went wrong, the end of its log; results.json goes (it
    was stale or incomplete), so the report shows only this config's numbers."""
    log.error("cell %s / %s failed: %s", cell.server, cell.load, error.splitlines()[0])
    log_path = getattr(server, "log_path", None)
    record = {
        "server_name": cell.server,
        "load_name": cell.load,
        "engine": cell.engine,
        "model": info.get("model", cell.model),
        "args": cell.args,
        "command": info.get("command"),
        "error": error,
        "log_path": str(log_path) if log_path else None,
        "log_tail": log_tail(Path(log_path), LOG_LINES) if log_path else "(no server log)",
        "cell_hash": cell.hash,
    }
    write_json_atomic(cell.folder / "error.json", record)
    (cell.folder / "results.json").unlink(missing_ok=True)


def bench_cell(
    cfg: SweepConfig, cell: Cell, srv: object, info: dict, runner: Callable
) -> tuple[dict | None, str | None]:
    """(the bench's results, the error or None). Any exception is the cell's error: one bad
    cell must not stop the sweep."""
    log.info("cell %s / %s", cell.server, cell.load)
    try:
        res = runner(
            bench.BenchConfig(
                base_url=srv.url,
                model=cfg.served_model_name,
                tokenizer=info["model"],
                save=False,
                server_info=info,
                **cell.params,
            )
        )
    except Exception as e:
        log.exception("cell %s / %s raised", cell.server, cell.load)
        return None, f"{type(e).__name__}: {e}"
    if not (res.get("completed") or 0) > 0:
        errors = res.get("errors") or ["(none recorded)"]
        return (
            res,
            f"0 of {res.get('num_prompts', '?')} requests completed; first error: {errors[0]}",
        )
    return res, None


def prepare_server(cfg: SweepConfig, cells: list[Cell], launcher: Callable) -> tuple:
    """The cells' server, not started: (server, info, None), or (None, info, error) when it
    cannot be made (a hub id that cannot be fetched, a launcher check that fails)."""
    first = cells[0]
    info = {"engine": first.engine, "model": model_path(first.model), "args": first.args}
    try:
        info["model"] = resolve_model(first.model)  # a hub id: downloaded here, unless offline
        server = launcher(
            first.engine,
            info["model"],
            extra=first.args,
            max_model_len=cfg.max_model_len,
            log_dir=first.folder.parent,
            served_name=cfg.served_model_name,
        )
    except Exception as e:
        return None, info, e
    return server, info, None


def spawn_early(prepared: tuple) -> tuple:
    """Start a prepared server's process now, without waiting for it (its turn waits)."""
    server, info, error = prepared
    spawn = getattr(server, "spawn", None)
    if error is None and spawn is not None:
        try:
            spawn()
        except Exception as e:
            return None, info, e
    return prepared


def settle(prepared: tuple) -> tuple:
    """Wait until a server spawned early is ready (a failure is its cells' error, at its turn)."""
    server, info, error = prepared
    if error is None and getattr(server, "proc", None) is not None:
        try:
            server.wait_ready()
        except Exception as e:
            server.stop()
            return None, info, e
    return prepared


def run_server(
    cfg: SweepConfig,
    cells: list[Cell],
    launcher: Callable,
    runner: Callable,
    scraper: Callable[[str], dict] = server_metrics.scrape,
    prepared: tuple | None = None,
) -> None:
    """Start the cells' server once (or wait for it, if spawned early) and run them in order;
    each ends done or failed."""
    left = list(cells)
    server, info, error = prepared or prepare_server(cfg, cells, launcher)
    try:
        if error is not None:
            raise error
        with server as srv:
            info["command"] = srv.cmd
            run_cells(cfg, left, srv, info, runner, scraper)
    except Exception as e:  # the server did not start (or stop): its remaining cells failed
        for cell in left:
            fail_cell(cell, str(e) or type(e).__name__, info, server)


def run_cells(
    cfg: SweepConfig, left: list[Cell], srv, info: dict, runner: Callable, scraper: Callable
) -> None:
    """Run `left` on the started server `srv`, popping each cell as it ends. The server's
    counters (/metrics) are read before the first cell and after each: a cell's results carry
    what its traffic changed (`server_metrics`: prefix-cache hit rate, preemptions)."""
    before = scraper(srv.url)
    while left:
        cell = left[0]
        res, error = bench_cell(cfg, cell, srv, info, runner)
        if not srv.alive():  # numbers from a dying server are not a result
            code = getattr(getattr(srv, "proc", None), "returncode", None)
            died = f"the server exited (code {code}) while this cell ran"
            fail_cell(cell, f"{died}; {error}" if error else died, info, srv)
            for rest in left[1:]:
                fail_cell(rest, f"not run: the server exited during {cell.load}", info, srv)
            left.clear()
            return
        after = scraper(srv.url)
        if error:
            fail_cell(cell, error, info, srv)
        else:
            res["server_metrics"] = server_metrics.cell_counters(before, after)
            save_cell(cell, res)
        before = after
        left.pop(0)


def run_sweep(
    cfg: SweepConfig,
    launcher: Callable = launch,
    runner: Callable = bench.main,
    scraper: Callable[[str], dict] = server_metrics.scrape,
) -> Path:
    """Run every cell not done yet, server by server; return the sweep's folder."""
    out = sweep_dir(cfg)
    write_json_atomic(out / "sweep.json", {"config": cfg.__dict__})
    groups = []
    for name, cells in by_server(plan(cfg)).items():
        todo = [c for c in cells if cell_status(c) != "done"]
        if todo:
            groups.append(todo)
        else:
            log.info("server %s: all %d cells done, skipping", name, len(cells))
    # Servers start in groups of `at_once`: a group's servers are spawned together, and its
    # cells run only once every one of them is ready, one server after the other (the others
    # idle): start-ups overlap each other, never a measured cell.
    at_once = servers_at_once(mem_available_gib(), most=cfg.servers_at_once or 3)
    early: dict[int, tuple] = {}
    try:
        for i, todo in enumerate(groups):
            together = range(i, min(i + at_once, len(groups)))
            if i % at_once == 0 and len(together) > 1:
                for j in together:
                    early[j] = spawn_early(prepare_server(cfg, groups[j], launcher))
                for j in together:
                    early[j] = settle(early[j])
            run_server(cfg, todo, launcher, runner, scraper, early.pop(i, None))
    finally:  # interrupted: a server spawned early and never run is stopped too
        for server, _info, _error in early.values():
            if server is not None and hasattr(server, "stop"):
                server.stop()
    log.info("sweep %s done: %s", cfg.name, out)
    return out


def describe(values: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "(none)"


def dry_run(cfg: SweepConfig, machine: Machine, echo: Callable[[str], None] = print) -> int:
    """Print every cell (server command, load, output folder, status) and every problem that
    would stop the real run on `machine`; start nothing. Returns 0 if it can run, else 1."""
    cells, problems = plan(cfg), {}  # problem -> the servers it stops
    echo(f"sweep {cfg.name}: {len(cfg.servers)} server settings, {len(cells)} cells")
    echo(f"output: {sweep_dir(cfg)}\nmachine: {machine.describe()}")
    echo(f"bench defaults: {describe(cfg.bench)}")
    for name, group in by_server(cells).items():
        first = group[0]
        model = model_path(first.model)
        spec = server_spec(
            first.engine, model, "PORT", first.args, cfg.max_model_len, cfg.served_model_name
        )
        for problem in preflight(first.engine, model, first.args, machine):
            problems.setdefault(problem, []).append(name)
        echo(
            f"\nserver {name}: engine {first.engine}, model {first.model} ({check_model(model, machine.offline)[0]})"
        )
        echo(f"  command: {shlex.join(spec.cmd)}")
        for cell in group:
            echo(f"  [{cell_status(cell)}] {name} / {cell.load}: {describe(cell.fields)}")
            echo(f"      -> {cell.folder}  (cell {cell.hash})")
    done = sum(cell_status(c) == "done" for c in cells)
    if problems:
        echo(f"\n{len(problems)} problem(s) would stop the real run:")
        for problem, names in problems.items():
            echo(f"- server(s) {', '.join(names)}: {problem}")
        return 1
    echo(f"\nready: {len(cells) - done} of {len(cells)} cells to run ({done} done)")
    return 0


def dry_run_file(path: Path, machine: Machine | None = None) -> int:
    """The CLI's dry run: a config that does not parse is an error message, not a traceback."""
    try:
        cfg = SweepConfig.from_yaml(path)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return dry_run(cfg, machine or detect_machine())


@dataclass
class SweepArgs:
    """Sweep the serving levers: every server setting × every load, resumable."""

    config: Path = field(metadata={"cli": False})  # sweep YAML (a positional argument)
    dry_run: bool = False  # print every cell and what would stop the run here; start nothing


def parse_args(argv: list[str] | None = None) -> SweepArgs:
    p = build_parser(SweepArgs, description=__doc__)
    p.add_argument(
        "config", type=Path, help="sweep YAML, e.g. week2_serving/harness/configs/cpu.yaml"
    )
    return config_from_args(SweepArgs, p.parse_args(argv))


def main(argv: list[str] | None = None) -> Path:
    a = parse_args(argv)
    if a.dry_run:
        raise SystemExit(dry_run_file(a.config))
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the running server is stopped
        try:
            return run_sweep(SweepConfig.from_yaml(a.config))
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM raised as Terminated
            sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            log.warning("interrupted by %s; finished cells are kept: rerun to resume", sig.name)
            raise SystemExit(128 + sig) from None


if __name__ == "__main__":
    main()
