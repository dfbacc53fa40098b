"""Multi-turn load with prefix caching on and off: the server's hit rate and TTFT per turn.

    python -m week2_serving.harness.prefix_study                 # vLLM CPU, the week 1 model
    python -m week2_serving.harness.prefix_study --engine engine --name engine

Starts two servers, prefix cache on (vLLM's default) and off, and sends each the same
multi-turn workload (multiturn.py: every turn resends the conversation so far) `--num-runs`
times, the runs alternating between the two (so a drift in the machine's load falls on both)
and the cache reset before each run. The server's own counters (/metrics: prefix-cache
queries and hits) give the hit rate; TTFT is broken down by turn. With the cache on, later
turns find the earlier turns' prompts cached and their TTFT should fall below the cache-off
TTFT of the same turn, whose prefill grows with the history. The results say whether both
hold (`checks`: hit rate > 0 with the cache on; the median TTFT of every turn in the second
half of the conversation lower with it on than off). The defaults are small (`make week2`): 4 turns whose prompts grow to ~900
tokens, so that the later turns' shared history spans several of the server's KV blocks.
Writes runs/week2/prefix-study-<name>/results.json and ttft_by_turn.png; the week 2 report
shows them (`prefix_section`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from common.cli import parse
from common.plots import plt, save
from common.procs import sigterm_as_interrupt
from common.report import md_table
from common.results import get_logger, read_json, run_dir, runs_root, save_results
from common.server import mem_available_gib, servers_at_once
from week2_serving.harness import bench, server_metrics
from week2_serving.harness.launch import launch
from week2_serving.harness.multiturn import ttft_by_turn
from week2_serving.harness.repeats import combine_runs

log = get_logger("week2.prefix_study")
OFF_FLAGS = {"vllm": ["--no-enable-prefix-caching"], "engine": ["--no-enable-prefix-caching"]}
# vLLM serves this study eager (no torch.compile warm-up: each start is ~45 s shorter on 2
# cores). The study compares the cache on and off on the same kind of server, and its load is
# a fixed arrival rate, so eager costs it nothing but a little TTFT on both sides alike.
EXTRA_FLAGS = {"vllm": ["--enforce-eager"], "engine": []}


@dataclass
class PrefixStudyConfig:
    """Multi-turn conversations against a server with prefix caching on, then off."""

    name: str = "vllm"  # results go to runs/week2/prefix-study-<name>
    engine: str = "vllm"  # vllm | engine
    model: str | None = None  # HF folder (none: runs/week1/hf-model)
    conversations: int = 10  # conversations per run
    num_turns: int = 4  # turns per conversation
    input_len: int = 192  # tokens of each new user message
    output_len: int = 32  # tokens of each reply
    think_time_s: float = 0.5  # between a reply and the next turn
    request_rate: float = 1.0  # conversations started per second (Poisson)
    num_runs: int = 2  # runs per setting (medians, min-max)

    def __post_init__(self) -> None:
        if self.engine not in OFF_FLAGS:
            raise ValueError(f"engine={self.engine!r}: use one of {', '.join(OFF_FLAGS)}")
        if min(self.conversations, self.num_turns, self.num_runs) < 1:
            raise ValueError("conversations, num_turns and num_runs must be >= 1")


def workload(cfg: PrefixStudyConfig, url: str, tokenizer: str, warmups: int) -> bench.BenchConfig:
    """One run of the multi-turn workload (the prefix cache reset before it)."""
    return bench.BenchConfig(
        base_url=url,
        model="m",
        tokenizer=tokenizer,
        dataset_name="multi-turn",
        num_prompts=cfg.conversations * cfg.num_turns,
        num_turns=cfg.num_turns,
        think_time_s=cfg.think_time_s,
        random_input_len=cfg.input_len,
        random_output_len=cfg.output_len,
        request_rate=cfg.request_rate,
        num_warmups=warmups,
        save=False,
    )


def measure(cfg: PrefixStudyConfig, out) -> tuple[dict, dict]:
    """Both servers up at once (cache on, cache off); runs alternate on, off, on, off... so
    that a machine whose background load drifts weighs on both alike. Returns each setting's
    runs combined (per-turn TTFT over every run) with its server's counters."""
    model = cfg.model or str(runs_root() / "week1" / "hf-model")
    env = {"VLLM_SERVER_DEV_MODE": "1"} if cfg.engine == "vllm" else {}

    def start(extra: list[str]):
        extra = EXTRA_FLAGS[cfg.engine] + extra
        return launch(cfg.engine, model, extra=extra, log_dir=out, served_name="m", env=env)

    pair = [start([]), start(OFF_FLAGS[cfg.engine])]
    try:
        if servers_at_once(mem_available_gib()) > 1:  # their start-ups side by side
            for server in pair:
                server.spawn()
        with pair[0] as on_srv, pair[1] as off_srv:
            servers = {True: on_srv, False: off_srv}
            before = {c: server_metrics.scrape(s.url) for c, s in servers.items()}
            runs: dict[bool, list[dict]] = {True: [], False: []}
            for k in range(cfg.num_runs):
                for caching, srv in servers.items():
                    cfg_k = workload(cfg, srv.url, model, warmups=1 if k == 0 else 0)
                    runs[caching].append(bench.main(cfg_k))
            counters = {
                c: server_metrics.cell_counters(before[c], server_metrics.scrape(s.url))
                for c, s in servers.items()
            }
    finally:
        for server in pair:
            server.stop()
    both = []
    for caching in (True, False):
        res = combine_runs(runs[caching])
        res["per_turn"] = ttft_by_turn(res.pop("requests"))
        both.append({"prefix_caching": caching, "server_metrics": counters[caching], **res})
    return both[0], both[1]


def plot(on: dict, off: dict, path) -> object:
    """Mean TTFT per turn, cache on vs off (the median run's numbers)."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for res, label in ((on, "prefix caching on"), (off, "prefix caching off")):
        turns = sorted(res["per_turn"], key=int)
        ax.plot(
            [int(t) + 1 for t in turns],
            [res["per_turn"][t]["mean_ttft_ms"] for t in turns],
            "-o",
            label=label,
        )
    ax.set_xlabel("turn")
    ax.set_ylabel("mean TTFT (ms)")
    ax.set_title("multi-turn TTFT by turn (each turn resends the history)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def checks(results: dict) -> dict:
    """The issue's two claims: a hit rate > 0 with the cache on, and a lower median TTFT (runs
    pooled) with the cache on than off for every turn of the conversation's second half — the
    turns whose prompt is mostly history. (Turn 2 reuses only turn 1's prompt, a few ms of
    prefill on a small model: the results show it, the check does not bet on it.)"""
    on, off = results["on"]["per_turn"], results["off"]["per_turn"]
    turns = sorted((t for t in on if t in off), key=int)
    later = [t for t in turns if int(t) >= len(turns) // 2 and int(t) > 0]
    return {
        "hit_rate_on_positive": bool((results.get("hit_rate_on") or 0) > 0),
        "later_turns_lower": bool(later)
        and all(on[t]["median_ttft_ms"] < off[t]["median_ttft_ms"] for t in later),
    }


def _pct(x) -> str:
    return f"{x:.0%}" if isinstance(x, (int, float)) else "n/a"


def prefix_section(sweep, cells, baseline) -> str | None:
    """The week 2 report's part (a report.Section): each prefix study beside the sweep, its
    hit rates, TTFT by turn with the cache on and off, and its plot."""
    rows, imgs = [], []
    for path in sorted(Path(sweep).parent.glob("prefix-study-*/results.json")):
        res = read_json(path)
        on, off = res["on"]["per_turn"], res["off"]["per_turn"]
        for t in sorted(on, key=int):
            rows.append(
                [path.parent.name, int(t) + 1, f"{on[t]['mean_prompt_len']:.0f}"]
                + [f"{x[t]['median_ttft_ms']:.1f}" if t in x else "n/a" for x in (on, off)]
            )
        imgs.append(
            f"{path.parent.name}: server hit rate on {_pct(res.get('hit_rate_on'))}, off "
            f"{_pct(res.get('hit_rate_off'))}; checks {res.get('checks')}\n\n"
            f"![TTFT by turn](../{path.parent.name}/ttft_by_turn.png)"
        )
    if not rows:
        return None
    head = ["study", "turn", "prompt tokens", "median TTFT ms, cache on", "cache off"]
    return "\n".join([md_table(head, rows), "", *imgs])


def main(cfg: PrefixStudyConfig) -> dict:
    out = run_dir("week2", f"prefix-study-{cfg.name}")
    on, off = measure(cfg, out)
    last = str(cfg.num_turns - 1)
    results = {
        "config": asdict(cfg),
        "hit_rate_on": on["server_metrics"].get("prefix_cache_hit_rate"),
        "hit_rate_off": off["server_metrics"].get("prefix_cache_hit_rate"),
        "last_turn_ttft_ms": {
            "on": on["per_turn"][last]["mean_ttft_ms"],
            "off": off["per_turn"][last]["mean_ttft_ms"],
        },
        "on": on,
        "off": off,
    }
    results["checks"] = checks(results)
    plot(on, off, out / "ttft_by_turn.png")
    save_results("week2", f"prefix-study-{cfg.name}", results)
    log.info("hit rate on %s off %s", results["hit_rate_on"], results["hit_rate_off"])
    log.info("last-turn TTFT ms: %s; checks %s", results["last_turn_ttft_ms"], results["checks"])
    return results


if __name__ == "__main__":
    cfg = parse(PrefixStudyConfig, description=__doc__)
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: both servers are stopped
        main(cfg)
