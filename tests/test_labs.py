"""The labs grade themselves: each lab's checks pass on the reference code and fail on its
stubs (so the grader can fail), and `lab-start` makes a branch holding exactly those stubs.

The stubs are made from a temporary copy of the source (never by switching branches): the
stubbed module is executed beside the real one and swapped in wherever the real one's
functions and classes are referenced, for the duration of one test.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from common import labs
from tests.conftest import REPO
from tests.lab_checks import CHECKS

PACKAGES = ("week0_pytorch", "week1_gpt_kvcache", "week2_serving", "week3_finetune_lora")


def swap_in_stubs(lab: labs.Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace every function and class the lab's files define by its stubbed version, in
    every loaded module of the project that refers to it (as `from x import f` copies do)."""
    for rel in lab.files:
        name = rel.removesuffix(".py").replace("/", ".")
        real = importlib.import_module(name)
        stub = types.ModuleType(name)
        stub.__file__ = real.__file__
        monkeypatch.setitem(sys.modules, name, stub)
        source = labs.stub_source((REPO / rel).read_text(), lab.name)
        exec(compile(source, f"<stub of {rel}>", "exec"), stub.__dict__)
        swaps = {
            id(obj): stub.__dict__[key]
            for key, obj in vars(real).items()
            if getattr(obj, "__module__", None) == name and key in stub.__dict__
        }
        modules = [m for n, m in list(sys.modules.items()) if n.startswith(PACKAGES) and m]
        for module in [*modules, real]:
            for key, obj in list(vars(module).items()):
                if id(obj) in swaps:
                    monkeypatch.setattr(module, key, swaps[id(obj)])


@pytest.mark.parametrize("name", list(labs.LABS))
def test_lab_checks_pass(name: str) -> None:
    """What `make lab-check` runs: the lab's checks on the code in the tree."""
    for check in CHECKS[name]:
        check()


@pytest.mark.parametrize("name", list(labs.LABS))
def test_stubbed_lab_fails_every_check(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    swap_in_stubs(labs.LABS[name], monkeypatch)
    for check in CHECKS[name]:
        with pytest.raises((NotImplementedError, AssertionError)):
            check()


def test_every_lab_has_markers_checks_and_a_clean_stub() -> None:
    assert set(CHECKS) == set(labs.LABS)
    for lab in labs.LABS.values():
        for rel in lab.files:
            text = (REPO / rel).read_text()
            stub = labs.stub_source(text, lab.name)
            compile(stub, rel, "exec")
            assert stub != text and "NotImplementedError" in stub and "# HINT" in stub
            assert labs.stub_source(stub, lab.name) == stub  # re-stubbing a stub changes nothing
            regions = [m["body"] for m in labs.marker_re(lab.name).finditer(stub)]
            assert len(regions) == len(labs.marker_re(lab.name).findall(text))
            for body in regions:  # each stubbed region: its HINTs and the raise, no other code
                code = [ln.strip() for ln in body.splitlines() if not ln.strip().startswith("#")]
                assert code and all(ln.startswith("raise NotImplementedError") for ln in code), rel
    with pytest.raises(ValueError, match="no '# LAB:kvcache begin'"):
        labs.stub_source("def f():\n    return 1\n", "kvcache")


def test_lab_start_makes_a_branch_with_the_stubs(tmp_path: Path, monkeypatch) -> None:
    lab = labs.LABS["dpo-loss"]
    (tmp_path / "week3_finetune_lora").mkdir()
    reference = (REPO / lab.files[0]).read_text()
    (tmp_path / lab.files[0]).write_text(reference)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "reference"]):
        subprocess.run([*git, *cmd], cwd=tmp_path, check=True)
    monkeypatch.setattr(labs, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(labs, "_git", lambda *a: subprocess.run(
        [*git, *a], cwd=tmp_path, capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert labs.start(lab) == "lab/dpo-loss"
    assert (tmp_path / lab.files[0]).read_text() == labs.stub_source(reference, lab.name)
    branch = subprocess.run(["git", "branch", "--show-current"], cwd=tmp_path,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert branch == "lab/dpo-loss"
    with pytest.raises(SystemExit, match="exists"):
        subprocess.run([*git, "switch", "-q", "main"], cwd=tmp_path, check=True)
        labs.start(lab)
