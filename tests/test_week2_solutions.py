"""Week 2's worked solutions run, and say what their exercises expect; every exercise of the
README links a solution file that exists."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO
from week2_serving.solutions import ex2_burstiness, ex5_block_size


def test_burstier_arrivals_wait_longer_at_the_same_rate() -> None:
    cfg = ex2_burstiness.BurstConfig(num_requests=4000, burstiness=(1.0, 0.25))
    rows = ex2_burstiness.main(cfg)
    assert rows[0.25]["p99_wait_ms"] > 2 * rows[1.0]["p99_wait_ms"]
    assert rows[0.25]["mean_wait_ms"] > rows[1.0]["mean_wait_ms"] > 0


def test_queue_waits_follow_lindley_by_hand() -> None:
    import numpy as np

    waits = ex2_burstiness.queue_waits(np.array([0.0, 0.05, 0.3, 0.01]), service_s=0.1)
    assert waits.tolist() == pytest.approx([0.0, 0.05, 0.0, 0.09])


@pytest.mark.parametrize("bad", [{"rate": float("nan")}, {"rate": 20.0}, {"burstiness": (0.0,)}])
def test_burst_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        ex2_burstiness.BurstConfig(**bad)


def test_block_size_hit_rates_match_full_blocks_of_the_prefix() -> None:
    cfg = ex5_block_size.BlockSizeConfig(block_sizes=(1, 16, 128), prefix_len=200)
    rows = ex5_block_size.main(cfg)
    per_prefix = cfg.requests_per_prefix
    for bs, r in rows.items():  # every request after a prefix's first reuses its full blocks
        reused = (cfg.prefix_len // bs) * bs
        expected = (per_prefix - 1) * reused / (per_prefix * (cfg.prefix_len + cfg.suffix_len))
        assert r["hit_rate"] == pytest.approx(expected)
    assert rows[1]["hit_rate"] > rows[16]["hit_rate"] > rows[128]["hit_rate"]
    with pytest.raises(ValueError, match="block sizes"):
        ex5_block_size.BlockSizeConfig(block_sizes=(0,))


def test_every_exercise_links_an_existing_solution() -> None:
    text = (REPO / "week2_serving" / "README.md").read_text()
    exercises = text.split("## Exercises", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\((solutions/[\w./-]+)\)", exercises)
    assert len(links) >= 7
    for link in links:
        assert (REPO / "week2_serving" / link).is_file(), link
