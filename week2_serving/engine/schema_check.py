"""An independent check of structured output: does a JSON value satisfy a JSON schema?

The grammar (structured.py) guarantees the shape by construction; this checks it from the other
side, with none of xgrammar's code, for the tests and `structured_bench`. It covers the JSON
Schema keywords used there (type, enum, const, properties, required, additionalProperties,
items, minItems, maxItems, minLength, maxLength, pattern, minimum, maximum) and refuses any
other keyword, so a schema it cannot judge is never passed by accident.

Also here: the bounded example schema and regex both use. Bounded means every value the
grammar allows is short (enums, patterns with counted repeats, small integer ranges, maxItems),
so even a model that writes at random reaches the end within a few dozen tokens.
"""

from __future__ import annotations

import re

# A schema with nested objects, enums and arrays; with compact JSON its longest output is
# about 90 characters.
BOUNDED_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{1,8}$"},
        "kind": {"enum": ["cat", "dog", "fish"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "enum": ["red", "blue"]},
            "maxItems": 3,
        },
        "pos": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 99},
                "ok": {"type": "boolean"},
            },
            "required": ["x", "ok"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "tags", "pos"],
    "additionalProperties": False,
}
BOUNDED_REGEX = r"[A-Z][a-z]{1,6} [0-9]{3}-[0-9]{2}"
CHOICES = ["yes", "no", "maybe later"]

KNOWN = {
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
    "title", "description",
}  # fmt: skip
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value, schema: dict, where: str = "$") -> list[str]:
    """What is wrong with `value` under `schema` (empty: it validates); paths like $.pos.x."""
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValueError(f"schema_errors cannot judge the keywords {sorted(unknown)}")
    errors: list[str] = []
    t = schema.get("type")
    if t is not None and not TYPES[t](value):
        return [f"{where}: {value!r} is not of type {t}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        errors += _object_errors(value, schema, where)
    if isinstance(value, list):
        n = len(value)
        if not schema.get("minItems", 0) <= n <= schema.get("maxItems", n):
            errors.append(f"{where}: {n} items, outside minItems/maxItems")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            errors.append(f"{where}: length {len(value)} outside minLength/maxLength")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
    number = TYPES["number"](value)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        errors.append(f"{where}: {value} outside minimum/maximum")
    return errors


def _object_errors(value: dict, schema: dict, where: str) -> list[str]:
    props = schema.get("properties", {})
    errors = [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
    for key, item in value.items():
        if key in props:
            errors += schema_errors(item, props[key], f"{where}.{key}")
        elif schema.get("additionalProperties", True) is False:
            errors.append(f"{where}: unexpected property {key!r}")
    return errors
