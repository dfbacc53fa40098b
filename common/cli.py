"""One way to build a command line: from the config dataclass an entry point already has.

Each script owns a dataclass (`TrainConfig`, `BenchConfig`, ...) whose fields carry a default and
a comment. `parse(TrainConfig)` turns it into a parser with one kebab-case flag per field, the
comment as the help text and the default shown beside it, so a default is written once:

    @dataclass
    class BenchConfig:
        num_prompts: int = 64  # requests in the run
        ignore_eos: bool = True  # generate exactly max_tokens (as vllm bench serve)

    cfg = parse(BenchConfig, presets={"smoke": {"num_prompts": 8}})

gives `--num-prompts N`, `--ignore-eos / --no-ignore-eos` and `--preset smoke`. The order of
precedence is: the dataclass default < the preset < a flag on the command line. A dataclass
that validates its values in `__post_init__` reports a bad one as a usage error (exit 2).

Types understood: str, int, float, bool, Path, Literal[...] (choices), X | None (the flag takes
X; the default stays None), list[X] (zero or more values) and tuples of one type (fixed count).
Fields with `field(metadata={"cli": False})` are left off the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import math
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

NONE_WORDS = {"none", "null"}


def field_comments(cls: type) -> dict[str, str]:
    """The comment on each field's line (or the comment lines just above it), by field name.

    Read with `tokenize` from the class's source lines, not with `ast`/`inspect.getsource`
    (which parse the whole module with the compiler: slower, and on CPython 3.11 it can fail
    spuriously after a RecursionError elsewhere in the process)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = _class_body(klass)
        if body:
            out.update(_comments_in(textwrap.dedent("\n".join(body)) + "\n"))
    return out


def _class_body(klass: type) -> list[str]:
    """The source lines of `klass`'s body (empty when the source cannot be found)."""
    try:
        lines = Path(inspect.getsourcefile(klass) or "").read_text().splitlines()
    except (OSError, TypeError):
        return []
    head = re.compile(rf"^(\s*)class {re.escape(klass.__name__)}\b")
    for i, line in enumerate(lines):
        m = head.match(line)
        if not m:
            continue
        indent, body = len(m.group(1)), []
        for line in lines[i + 1 :]:
            text = line.strip()
            if text and len(line) - len(line.lstrip()) <= indent:
                break  # the first line back at the class's own indentation ends its body
            body.append(line)
        return body
    return []


def _comments_in(source: str) -> dict[str, str]:
    """Field name -> comment, for the top-level `name: type = ...` lines of a class body."""
    comments: dict[int, str] = {}
    fields: list[tuple[str, int, int]] = []  # (name, first row, last row) of each field
    start, first = None, []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
            elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                names = [x for x in first if x.type not in (tokenize.INDENT, tokenize.DEDENT)]
                top = start is not None and start[1] == 0
                if (
                    top
                    and len(names) > 1
                    and names[0].type == tokenize.NAME
                    and names[1].string == ":"
                ):
                    fields.append((names[0].string, start[0], tok.start[0]))
                start, first = None, []
            elif tok.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
                start = start or tok.start
                if len(first) < 2:
                    first.append(tok)
    except (tokenize.TokenError, IndentationError):
        return {}
    lines = source.splitlines()
    found: dict[str, str] = {}
    for name, row, end in fields:
        text = comments.get(end)
        if text is None:  # comment lines directly above the field
            above = []
            while row > 1 and lines[row - 2].strip().startswith("#"):
                row -= 1
                above.insert(0, comments.get(row, ""))
            text = " ".join(above) if above else None
        if text:
            found[name] = text
    return found


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(tp: Any, optional: bool) -> Callable[[str], Any]:
    """A converter for one command-line word; `none` gives None where the field allows it."""
    if tp is bool:
        base: Callable[[str], Any] = _bool_word
    elif tp in (int, float, str, Path):
        base = tp
    else:
        raise TypeError(f"common.cli cannot make a flag of type {tp!r}")

    def convert(word: str) -> Any:
        if optional and word.lower() in NONE_WORDS:
            return None
        try:
            value = base(word)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{word!r} is not a valid {tp.__name__}") from None
        if tp is float and not math.isfinite(value) and word.lower() not in ("inf", "+inf"):
            raise argparse.ArgumentTypeError(f"{word!r}: a finite number (or inf) is expected")
        return value

    convert.__name__ = tp.__name__  # argparse names it in "invalid int value"
    return convert


def _bool_word(word: str) -> bool:
    low = word.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(word)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "(none)"
    return str(value)


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any, help_text: str):
    flag = "--" + f.name.replace("_", "-")
    tp, optional = _unwrap_optional(tp)
    default = (
        f.default
        if f.default is not dataclasses.MISSING
        else f.default_factory()  # type: ignore[misc]
        if f.default_factory is not dataclasses.MISSING
        else None
    )
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    shown = "required" if required else f"default: {_show(default)}"
    if "default:" in help_text:  # the comment states its default itself (e.g. a computed one)
        shown = "required" if required else ""
    kw: dict[str, Any] = {"dest": f.name, "help": f"{help_text} ({shown})" if shown else help_text}
    if required:
        kw["required"] = True
    origin = typing.get_origin(tp)
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        choices = typing.get_args(tp)
        kw.update(
            choices=choices, type=type(choices[0]), metavar="{" + ",".join(map(str, choices)) + "}"
        )
    elif origin in (list, Sequence) or origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = args[0] if args else str
        item, item_optional = _unwrap_optional(item)
        kw["type"] = _scalar(item, item_optional)
        fixed = origin is tuple and Ellipsis not in typing.get_args(tp) and len(args) > 1
        kw["nargs"] = len(args) if fixed else "*"
        kw["metavar"] = item.__name__.upper()
    else:
        kw["type"] = _scalar(tp, optional)
        kw["metavar"] = getattr(tp, "__name__", "VALUE").upper()
    parser.add_argument(flag, **kw)


def build_parser(
    config_cls: type,
    *,
    prog: str | None = None,
    description: str | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    default_preset: str | None = None,
    skip: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A parser with one flag per dataclass field (help from the field's comment)."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    doc = description if description is not None else (inspect.getdoc(config_cls) or "")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only what the user typed comes back
    )
    if presets:
        parser.add_argument(
            "--preset",
            choices=list(presets),
            default=default_preset,
            help="a named set of defaults; flags given here override it"
            + (f" (default: {default_preset})" if default_preset else ""),
        )
    hints = typing.get_type_hints(config_cls)
    comments = field_comments(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip or not f.metadata.get("cli", True) or not f.init:
            continue
        help_text = f.metadata.get("help") or comments.get(f.name, "")
        _add_field(parser, f, hints[f.name], help_text)
    return parser


def config_from_args(
    config_cls: type[T],
    args: argparse.Namespace,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    **fixed: Any,
) -> T:
    """The dataclass from parsed flags: defaults < preset < flags; `fixed` values win."""
    given = dict(vars(args))
    preset = given.pop("preset", None)
    values: dict[str, Any] = {}
    if preset is not None and presets:
        values.update(presets[preset])
    values.update(given)
    values.update(fixed)
    for name, value in list(values.items()):
        if (
            isinstance(value, list)
            and typing.get_origin(_unwrap_optional(typing.get_type_hints(config_cls)[name])[0])
            is tuple
        ):
            values[name] = tuple(value)
    return config_cls(**values)


def parse(
    config_cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    default_preset: str | None = None,
    description: str | None = None,
    prog: str | None = None,
) -> T:
    """Parse `argv` into `config_cls`; a value the dataclass rejects is a usage error (exit 2)."""
    parser = build_parser(
        config_cls,
        prog=prog,
        description=description,
        presets=presets,
        default_preset=default_preset,
    )
    args = parser.parse_args(argv)
    try:
        return config_from_args(config_cls, args, presets)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
        raise  # parser.error exits; this line is for type checkers
