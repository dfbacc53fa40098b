"""Structured output: a grammar decides which tokens may come next; the sampler masks the rest.

A request may ask for output of a given shape: any JSON object, JSON valid under a schema, text
matching a regular expression, one of a list of strings, or a context-free grammar (EBNF). Each
becomes a grammar, compiled once against the tokenizer's vocabulary by xgrammar (the engine
vLLM uses by default), and every sequence of the request gets its own matcher over it:

    grammars = Grammars(tokenizer, vocab_size=model.cfg.vocab_size)
    state = grammars.matcher(make_spec("regex", r"[0-9]{3}", "structured_outputs.regex"))
    row = state.mask(logits_row)    # (1, V): -inf on every token the grammar forbids now
    token = sample(row, ...)
    state.accept(token)             # the grammar moves on; is_terminated() after its stop token

Why xgrammar: it precomputes, per grammar state, which tokens are allowed independently of the
stack ("context-independent" tokens), so a step's mask is a bitmask (V/32 int32 words) filled
in microseconds, applied in place; it compiles JSON schema, regex and EBNF with one API, and
its matcher rolls back (needed by speculative decoding). llguidance is as fast but its grammar
format is its own; outlines-core builds a full token-level automaton per regex up front
(slow to compile for JSON schemas, no context-free grammars).

Two vocabularies: a model's embedding may be larger than its tokenizer (padded to a multiple of
64); the grammar is compiled for the larger of the two and the mask cut to the logits' width,
so padding tokens are always forbidden.

The sampler masks (per row, sampler.py) and the engine accepts once the step's sampling is
final (`Sampler.accept`, called from `LLMEngine.step`).
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
import xgrammar as xgr

KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")
MAX_SPEC_CHARS = 64 * 1024  # a schema (as JSON), a regex, a grammar, or all choices together
MAX_CHOICES = 256
MAX_SCHEMA_DEPTH = 32  # nesting of the schema document itself (objects and lists)
MAX_WHITESPACE = 16  # whitespace characters allowed between JSON tokens (unbounded: a model
#                      that likes spaces could spend all its max_tokens on them)


class StructuredError(ValueError):
    """A structured-output request that cannot be served; `param` names the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StructuredSpec:
    """What one request asks for, in canonical form (the cache key of its compiled grammar)."""

    kind: str  # one of KINDS
    text: str  # the schema as sorted JSON, the regex, the choices as a JSON list, the EBNF
    any_whitespace: bool = True  # JSON only: False = the compact form, no optional whitespace
    param: str = "structured_outputs"  # the request field it came from (error messages)

    def key(self) -> tuple[str, str, bool]:
        return self.kind, self.text, self.any_whitespace


def make_spec(kind: str, value, param: str, any_whitespace: bool = True) -> StructuredSpec:
    """Check a request's constraint (shape and size; compiling checks the rest) -> its spec."""
    if kind not in KINDS:
        raise StructuredError(f"unknown structured output kind {kind!r}; use one of {KINDS}", param)
    if kind == "json_object":
        text = ""
    elif kind == "json_schema":
        text = _schema_text(value, param)
    elif kind == "choice":
        if not isinstance(value, list) or not value or len(value) > MAX_CHOICES:
            raise StructuredError(
                f"{param} must be a list of 1 to {MAX_CHOICES} strings (got "
                f"{len(value) if isinstance(value, list) else type(value).__name__})",
                param,
            )
        if not all(isinstance(c, str) and c for c in value):
            raise StructuredError(f"{param}: every choice must be a non-empty string", param)
        text = json.dumps(value)
    else:  # regex, grammar
        if not isinstance(value, str) or not value:
            raise StructuredError(f"{param} must be a non-empty string", param)
        text = value
    if len(text) > MAX_SPEC_CHARS:
        raise StructuredError(
            f"{param} is {len(text)} characters; this server takes at most {MAX_SPEC_CHARS}", param
        )
    return StructuredSpec(kind, text, bool(any_whitespace), param)


def _schema_text(value, param: str) -> str:
    """A JSON schema (a dict, or its JSON text) -> canonical JSON text; shape checks only."""
    if isinstance(value, str):
        if len(value) > MAX_SPEC_CHARS:
            raise StructuredError(f"{param} is longer than {MAX_SPEC_CHARS} characters", param)
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as e:
            raise StructuredError(f"{param} is not valid JSON: {e}", param) from None
    if not isinstance(value, dict):
        raise StructuredError(f"{param} must be a JSON object (a schema)", param)
    if _depth(value) > MAX_SCHEMA_DEPTH:
        raise StructuredError(f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels", param)
    return json.dumps(value, sort_keys=True)


def _depth(doc) -> int:
    """How deeply a JSON document nests (iteratively: a hostile document cannot overflow)."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if d > MAX_SCHEMA_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node
        todo += [(c, d + 1) for c in children if isinstance(c, (dict, list))]
    return deepest


def choice_grammar(choices: list[str]) -> str:
    """EBNF for "exactly one of these strings" (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


class Grammars:
    """Compiles specs for one tokenizer and vocabulary, keeping the latest `cache_size` grammars.

    Not thread-safe: the server compiles on its one tokenizer thread."""

    def __init__(self, tokenizer, vocab_size: int, cache_size: int = 64):
        self.vocab_size = vocab_size  # the model's: the logits' width
        self.eos_token_id = tokenizer.eos_token_id
        stops = [self.eos_token_id] if self.eos_token_id is not None else None
        width = max(vocab_size, len(tokenizer))
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=width, stop_token_ids=stops
        )
        threads = max(1, min(4, os.cpu_count() or 1))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=threads, cache_enabled=False)
        self.cache: OrderedDict[tuple, xgr.CompiledGrammar] = OrderedDict()
        self.cache_size = cache_size
        self.hits = self.misses = 0

    def compile(self, spec: StructuredSpec) -> xgr.CompiledGrammar:
        """The compiled grammar of a spec (cached); a spec xgrammar refuses -> StructuredError."""
        key = spec.key()
        if key in self.cache:
            self.hits += 1
            self.cache.move_to_end(key)
            return self.cache[key]
        self.misses += 1
        try:
            compiled = self._compile(spec)
        except Exception as e:  # xgrammar says RuntimeError with the parser's message
            message = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            raise StructuredError(f"{spec.param} does not compile: {message}", spec.param) from e
        self.cache[key] = compiled
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return compiled

    def _compile(self, spec: StructuredSpec) -> xgr.CompiledGrammar:
        ws = MAX_WHITESPACE if spec.any_whitespace else None
        if spec.kind == "json_object":
            schema = '{"type": "object"}'
            return self.compiler.compile_json_schema(
                schema, any_whitespace=spec.any_whitespace, max_whitespace_cnt=ws
            )
        if spec.kind == "json_schema":
            return self.compiler.compile_json_schema(
                spec.text, any_whitespace=spec.any_whitespace, max_whitespace_cnt=ws
            )
        if spec.kind == "regex":
            return self.compiler.compile_regex(spec.text)
        if spec.kind == "choice":
            return self.compiler.compile_grammar(choice_grammar(json.loads(spec.text)))
        return self.compiler.compile_grammar(spec.text)

    def matcher(self, spec_or_grammar: StructuredSpec | xgr.CompiledGrammar) -> GrammarState:
        """A fresh per-sequence matcher (compiling the spec if it is not compiled yet)."""
        g = spec_or_grammar
        compiled = self.compile(g) if isinstance(g, StructuredSpec) else g
        return GrammarState(compiled, self.vocab_size, self.eos_token_id is None)


class GrammarState:
    """One sequence's place in its grammar: which tokens may come next, and accepting one."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int, no_stop_token: bool):
        self.matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=no_stop_token)
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self.num_accepted = 0
        self.mask_seconds = 0.0  # time spent filling and applying masks (the cost per token)
        self.num_masks = 0

    def _fill(self) -> None:
        self.matcher.fill_next_token_bitmask(self.bitmask)  # (1, ceil(V/32)) int32, 1 = allowed

    def allowed_mask(self) -> torch.Tensor:
        """(V,) bool: which tokens the grammar allows next (for tests and inspection)."""
        self._fill()
        bits = torch.arange(32, dtype=torch.int32)
        words = self.bitmask[0].unsqueeze(-1)  # (W, 1)
        allowed = ((words >> bits) & 1).bool().flatten()  # (W * 32,), bit j of word w = token
        return allowed[: self.vocab_size]  # 32 * w + j

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of (1, V) CPU logits with -inf on every token the grammar forbids now."""
        start = time.perf_counter()
        self._fill()
        out = logits.clone()
        xgr.apply_token_bitmask_inplace(out, self.bitmask, vocab_size=logits.shape[-1])
        self.mask_seconds += time.perf_counter() - start
        self.num_masks += 1
        return out

    def accept(self, token_id: int) -> bool:
        """Move on by one token; False (nothing changes) if the grammar does not allow it."""
        ok = self.matcher.accept_token(token_id)
        self.num_accepted += ok
        return ok

    def rollback(self, num_tokens: int) -> None:
        """Forget the last `num_tokens` accepted tokens (rejected speculative tokens)."""
        if not 0 <= num_tokens <= self.num_accepted:
            raise ValueError(f"cannot roll back {num_tokens} of {self.num_accepted} tokens")
        self.matcher.rollback(num_tokens)
        self.num_accepted -= num_tokens

    def is_terminated(self) -> bool:
        """Has the grammar ended (its stop token accepted, or, without one, its end reached)?"""
        return self.matcher.is_terminated()


def generate(engine, grammars: Grammars, prompts: list, params, spec: StructuredSpec | None):
    """Offline: run prompts to completion, each sequence under its own matcher of `spec` (None:
    no grammar) -> the finished Sequences, in input order (like `LLMEngine.generate`).
    `params`: one SamplingParams for all, or one per prompt."""
    each = params if isinstance(params, list) else [params] * len(prompts)
    seqs = [engine.make_sequence(p, sp) for p, sp in zip(prompts, each, strict=True)]
    compiled = grammars.compile(spec) if spec is not None else None
    for seq in seqs:
        seq.grammar = grammars.matcher(compiled) if compiled is not None else None
    pending = list(reversed(seqs))
    while pending or engine.has_unfinished():
        while pending and not engine.is_full():
            engine.add_sequence(pending.pop())
        engine.step()
    return seqs
