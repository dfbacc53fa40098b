"""Exercise 5 (week 0), worked: `log` and `sigmoid` for micrograd's `Value`.

    .venv/bin/python -m week0_pytorch.solutions.micrograd_ops

Each new operation is a forward value plus the local derivative that `_backward` multiplies
into the incoming gradient: d log(a)/da = 1/a, d sigmoid(a)/da = s(1 - s). They are written as
functions here so the solution stands beside the engine; in the exercise they become methods
of `Value` (`def log(self)`, `def sigmoid(self)`) with the same bodies.
"""

from __future__ import annotations

import math

from week0_pytorch.micrograd.engine import Value


def log(a: Value) -> Value:
    """Natural log; refuses a <= 0 (the derivative 1/a and the value are undefined there)."""
    if a.data <= 0:
        raise ValueError(f"log needs a positive value, got {a.data}")
    out = Value(math.log(a.data), (a,), "log")

    def _backward() -> None:  # d log(a)/da = 1/a
        a.grad += out.grad / a.data

    out._backward = _backward
    return out


def sigmoid(a: Value) -> Value:
    """1 / (1 + e^-a), computed without overflow for large |a|."""
    x = a.data
    s = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
    out = Value(s, (a,), "sigmoid")

    def _backward() -> None:  # d s/da = s (1 - s)
        a.grad += s * (1 - s) * out.grad

    out._backward = _backward
    return out


def main() -> tuple[float, float]:
    x = Value(0.7)
    y = log(sigmoid(x) * 3.0)  # a small graph: the chain rule runs through both new ops
    y.backward()
    print(f"y = log(3·sigmoid(0.7)) = {y.data:.6f}, dy/dx = {x.grad:.6f}")
    return y.data, x.grad


if __name__ == "__main__":
    main()
