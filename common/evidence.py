"""Correctness evidence: the equality and property tests that back the portfolio's numbers.

Each entry names a test by file and function and says, in one line, what it proves. The
portfolio page lists them (`make publish`); `check_registry` fails when a named test no longer
exists (renamed or deleted), so the page never cites a test that is gone. With a pytest JUnit
XML (`pytest --junitxml=...`) the page also says whether each one passed in that run.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from common.results import REPO_ROOT


@dataclass(frozen=True)
class Evidence:
    week: str
    test: str  # "tests/test_x.py::test_name"
    proves: str  # what a pass means, in one line
    kind: str = "equality"  # equality (two paths, same result) or property (random inputs)

    @property
    def file(self) -> str:
        return self.test.split("::")[0]

    @property
    def function(self) -> str:
        return self.test.split("::")[1]


EVIDENCE = [
    Evidence("0", "tests/test_micrograd.py::test_random_expressions_match_pytorch_float64",
             "the scalar autograd engine's values and gradients equal PyTorch's in float64",
             "property"),
    Evidence("0", "tests/test_week0_quantize.py::test_per_channel_error_is_at_most_half_a_step",
             "per-channel int8 rounding error is at most half a quantization step", "property"),
    Evidence("0", "tests/test_week0_quantize.py::test_int8_layers_match_float_layers",
             "the int8 layers compute what the float layers compute, within the rounding error"),
    Evidence("1", "tests/test_week1_model.py::test_greedy_with_cache_equals_without",
             "decoding with the KV cache gives exactly the tokens of full recomputation"),
    Evidence("1", "tests/test_week1_model.py::test_logits_match_hugging_face_reference",
             "our GPT's logits equal the Hugging Face model's on the same weights"),
    Evidence("1", "tests/test_week1_model.py::test_chunked_prefill_with_cache_equals_full_forward",
             "prefilling in chunks through the cache equals one full forward pass"),
    Evidence("1", "tests/test_week1_model.py::test_gqa_cache_is_smaller_and_formula_matches_tensors",
             "the KV-memory formula equals the bytes of the allocated cache tensors"),
    Evidence("2", "tests/test_week2_engine_model.py::test_paged_attention_equals_dense_on_random_block_layouts",
             "paged attention over scattered blocks equals dense attention", "property"),
    Evidence("2", "tests/test_week2_engine_model.py::test_engine_greedy_equals_hf_generate",
             "the serving engine (paged KV, continuous batching) produces HF generate()'s tokens"),
    Evidence("2", "tests/test_week2_engine_model.py::test_same_seed_same_tokens_whatever_the_batch",
             "a seeded request samples the same tokens whatever else is in the batch"),
    Evidence("2", "tests/test_week2_engine_core.py::test_random_add_step_abort_never_leaks_blocks",
             "random add / step / abort sequences never leak or double-free a KV block",
             "property"),
    Evidence("2", "tests/test_week2_engine_prefix.py::test_engine_outputs_and_hits_unchanged_when_python_hashes_collide",
             "prefix caching changes no output, even when Python's hashes collide"),
    Evidence("3", "tests/test_week3_lora.py::test_merged_logits_equal_base_plus_adapter",
             "a merged LoRA model's logits equal base + adapter applied on the fly"),
    Evidence("3", "tests/test_week3_lora.py::test_lora_changes_adapter_not_base",
             "training changes the adapter weights and leaves every base weight untouched"),
]  # fmt: skip


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions defined at the top level of a test file."""
    tree = ast.parse(path.read_text())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {n.name for n in tree.body if isinstance(n, kinds) and n.name.startswith("test_")}


def check_registry(root: Path = REPO_ROOT, evidence: list[Evidence] = EVIDENCE) -> list[str]:
    """Entries whose test file or function does not exist (empty = all present)."""
    missing = []
    for e in evidence:
        path = root / e.file
        if not path.is_file() or e.function not in defined_tests(path):
            missing.append(e.test)
    return missing


def junit_outcomes(path: Path) -> dict[str, str]:
    """`{"tests/test_x.py::test_name": "passed" | "failed" | "skipped"}` from a JUnit XML;
    parametrized cases fold into their function (failed beats skipped beats passed)."""
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        name = case.get("name", "").split("[")[0]
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif case.find("skipped") is not None:
            state = "skipped"
        else:
            state = "passed"
        key = f"{module}::{name}"
        if rank[state] >= rank[out.get(key, "passed")]:
            out[key] = state
    return out
