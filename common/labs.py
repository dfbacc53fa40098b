"""Build-it-yourself labs: reference code between markers becomes a stub you write.

In the reference code a lab's function bodies sit between two comments:

    # LAB:kvcache begin
    # HINT: what to do, in a line or two
    ...the reference implementation...
    # LAB:kvcache end

`make lab-start LAB=kvcache` makes a git branch `lab/kvcache` where each such body is replaced
by its HINT lines and `raise NotImplementedError(...)`. Write the bodies, then
`make lab-check LAB=kvcache` runs the tests that grade them (the lab's checks in
tests/lab_checks.py, then the week's own tests of that code). `tests/test_labs.py` proves in
`make test` that every lab's stubs fail its checks and the reference passes them.

    python -m common.labs                      # the labs
    python -m common.labs --start kvcache      # = make lab-start LAB=kvcache
    python -m common.labs --check kvcache      # = make lab-check LAB=kvcache
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

from common.cli import parse
from common.results import REPO_ROOT


@dataclass(frozen=True)
class Lab:
    name: str
    files: tuple[str, ...]  # files holding the lab's markers, relative to the repository
    tests: tuple[str, ...]  # the week's own test files that also grade it
    goal: str  # one line: what the learner builds


LABS = {
    lab.name: lab
    for lab in (
        Lab("kvcache", ("week1_gpt_kvcache/kvcache.py",), ("tests/test_week1_model.py",),
            "the KV cache: store each layer's keys/values, return the filled prefix"),
        Lab("lora-merge", ("week3_finetune_lora/lora_merge.py",), (),
            "fold a LoRA adapter into its base weight: W + (alpha / r) B A"),
        Lab("dpo-loss", ("week3_finetune_lora/dpo_loss.py",), (),
            "the DPO loss from sequence log-probabilities of policy and reference"),
        Lab("block-manager", ("week2_serving/engine/block_manager.py",), ("tests/test_week2_engine_core.py",),
            "paged KV bookkeeping: share cached prefix blocks, allocate with copy-on-write, free"),
        Lab("scheduler", ("week2_serving/engine/scheduler.py",), ("tests/test_week2_engine_core.py",),
            "continuous batching: running first under a token budget, admit, preempt the youngest"),
        Lab("paged-attention", ("week2_serving/engine/attention.py",), ("tests/test_week2_engine_model.py",),
            "attention through block tables: slots of every key, then one SDPA call per group"),
        Lab("spec-rejection", ("week2_serving/engine/spec/rejection.py",), ("tests/test_week2_engine_spec_units.py",),
            "speculative sampling's acceptance rule: keep the target's distribution exactly"),
        Lab("kv-int8", ("week2_serving/engine/kv_quant.py",), ("tests/test_week2_engine_kvquant.py",),
            "an 8-bit KV cache: one absmax scale per token per head, quantize and dequantize"),
    )
}  # fmt: skip


def get_lab(name: str) -> Lab:
    if name not in LABS:
        raise SystemExit(f"unknown lab {name!r}: use one of {', '.join(LABS)}")
    return LABS[name]


def marker_re(name: str) -> re.Pattern[str]:
    """A marked region: the begin line (its indentation kept), the body, the end line."""
    tag = re.escape(name)
    return re.compile(
        rf"^(?P<indent>[ \t]*)# LAB:{tag} begin\n(?P<body>.*?)^[ \t]*# LAB:{tag} end\n",
        re.M | re.S,
    )


def stub_source(text: str, name: str) -> str:
    """`text` with every region of lab `name` replaced by its HINT lines and a raise.

    The markers stay, so stubbing a learner's finished file again gives the same stub."""

    def one(m: re.Match) -> str:
        ind = m["indent"]
        hints = [ln for ln in m["body"].splitlines() if ln.strip().startswith("# HINT")]
        raise_line = (
            f'{ind}raise NotImplementedError("lab {name}: write this body (see the HINTs), '
            f'then make lab-check LAB={name}")'
        )
        return (
            "\n".join([f"{ind}# LAB:{name} begin", *hints, raise_line, f"{ind}# LAB:{name} end"])
            + "\n"
        )

    out, n = marker_re(name).subn(one, text)
    if n == 0:
        raise ValueError(f"no '# LAB:{name} begin' / '# LAB:{name} end' markers in this file")
    return out


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def start(lab: Lab) -> str:
    """Create and switch to branch lab/<name> with the stubs committed; return the branch."""
    if _git("status", "--porcelain", "--untracked-files=no").strip():
        raise SystemExit("lab-start: commit or stash your changes first (git status)")
    branch = f"lab/{lab.name}"
    if _git("branch", "--list", branch).strip():
        raise SystemExit(
            f"branch {branch} exists: `git switch {branch}` to continue it, or "
            f"`git branch -D {branch}` to start over"
        )
    _git("switch", "-c", branch)
    for rel in lab.files:
        path = REPO_ROOT / rel
        path.write_text(stub_source(path.read_text(), lab.name))
    _git("commit", "-q", "-am", f"lab {lab.name}: stubs to write ({lab.goal})")
    return branch


def check_command(lab: Lab) -> list[str]:
    """pytest on the lab's checks (tests/test_labs.py) and the week's tests of that code."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"tests/test_labs.py::test_lab_checks_pass[{lab.name}]", *lab.tests]  # fmt: skip


@dataclass
class LabsConfig:
    """List the labs, start one (a branch with its stubs) or check it (run its tests)."""

    start: str | None = None  # make branch lab/NAME holding the lab's stubs, and switch to it
    check: str | None = None  # run the tests that grade lab NAME


def main(cfg: LabsConfig) -> int:
    if cfg.start:
        lab = get_lab(cfg.start)
        branch = start(lab)
        print(
            f"on branch {branch}: write the bodies marked LAB:{lab.name} in {', '.join(lab.files)}"
        )
        print(f"then: make lab-check LAB={lab.name}")
        return 0
    if cfg.check:
        return subprocess.run(check_command(get_lab(cfg.check)), cwd=REPO_ROOT).returncode
    for lab in LABS.values():
        print(f"{lab.name:16} {lab.goal}  ({', '.join(lab.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse(LabsConfig, description=__doc__)))
