"""The engine server's command line refuses hostile numbers before anything loads."""

from __future__ import annotations

import pytest

from week2_serving.engine.server import parse_args


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "99999"],
        ["--port", "0"],
        ["--block-size", "0"],
        ["--max-num-seqs", str(2**64)],
        ["--max-num-batched-tokens", "-1"],
        ["--num-kv-blocks", str(2**64)],
        ["--kv-cache-gib", "inf"],
        ["--kv-cache-gib", "nan"],
        ["--kv-cache-gib", "-1"],
        ["--threads", "0"],
        ["--request-timeout", "nan"],
        ["--max-body-bytes", "-1"],
        ["--max-num-waiting", "-3"],
    ],
)
def test_hostile_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err or argv[0].lstrip("-").replace("-", "_") in err  # named: flag or field


def test_defaults_still_parse():
    cfg = parse_args([])
    assert cfg.port == 8000 and cfg.block_size >= 1
