"""How many servers a study starts side by side, from the memory the kernel reports."""

from __future__ import annotations

import pytest

from common.server import SERVER_GIB, mem_available_gib, servers_at_once


def test_mem_available_reads_the_kernels_line(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemAvailable:   16777216 kB\n")
    assert mem_available_gib(str(f)) == pytest.approx(16.0)


@pytest.mark.parametrize("text", ["", "MemAvailable: lots kB\n", "MemTotal: 1 kB\n"])
def test_mem_available_unreadable_is_none(tmp_path, text):
    f = tmp_path / "meminfo"
    f.write_text(text)
    assert mem_available_gib(str(f)) is None
    assert mem_available_gib(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (None, 1),
        (float("nan"), 1),
        (-3.0, 1),
        (0.5, 1),
        (3 * SERVER_GIB - 0.01, 1),
        (3 * SERVER_GIB, 2),
        (4 * SERVER_GIB, 3),
        (500.0, 3),
    ],
)
def test_servers_at_once_leave_one_servers_worth_of_memory(available, expected):
    assert servers_at_once(available) == expected
    assert servers_at_once(available, most=1) == 1
