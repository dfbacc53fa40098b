"""Every command that starts a server turns SIGTERM into an exception that unwinds its `with`
blocks (common.procs.sigterm_as_interrupt). Python's default for SIGTERM ends the process at
once, and the server it started would run on (test_processes_signals.py shows the mechanism
on real processes; this checks that each entry point uses it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

STARTS_SERVERS = [
    "week2_serving/harness/acceptance.py",
    "week2_serving/harness/bench.py",
    "week2_serving/harness/capacity.py",
    "week2_serving/harness/capacity_levers.py",
    "week2_serving/harness/launch.py",
    "week2_serving/harness/prefix_study.py",
    "week2_serving/harness/soak.py",
    "week2_serving/harness/sweep.py",
    "week2_serving/harness/validate.py",
    "week2_serving/quant/quality.py",
]


def main_guard_uses_sigterm_as_interrupt(path: Path) -> bool:
    """The module's `if __name__ == "__main__":` block, or the `main` it calls, runs inside
    `with sigterm_as_interrupt():`."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == (
                    "sigterm_as_interrupt"
                ):
                    return True
    return False


@pytest.mark.parametrize("module", STARTS_SERVERS)
def test_commands_that_start_servers_stop_them_on_sigterm(module):
    assert main_guard_uses_sigterm_as_interrupt(REPO / module), (
        f"{module}: wrap its work in `with sigterm_as_interrupt():`"
    )


def test_the_check_sees_a_missing_wrapper(tmp_path):
    bare = tmp_path / "bare.py"
    bare.write_text('if __name__ == "__main__":\n    main()\n')
    assert not main_guard_uses_sigterm_as_interrupt(bare)
