"""A scalar that remembers how it was computed, so it can compute its own gradient.

Each operation creates a new Value with `_parents` (its inputs) and `_backward`, a closure
that applies the chain rule locally: given d(loss)/d(out) in `out.grad`, it adds
d(loss)/d(input) = d(out)/d(input) * out.grad to each input's `.grad`.
`backward()` runs those closures from the loss back to the leaves, in reverse topological
order, so every node's grad is complete before it is passed on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Number = int | float


class Value:
    __slots__ = ("data", "grad", "_parents", "_backward", "op", "label")

    def __init__(
        self, data: Number, parents: tuple[Value, ...] = (), op: str = "", label: str = ""
    ):
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise TypeError(f"Value holds a Python number, got {type(data).__name__}: {data!r}")
        self.data = float(data)
        self.grad = 0.0
        self._parents = parents
        self._backward: Callable[[], None] = lambda: None
        self.op = op
        self.label = label

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    @staticmethod
    def _lift(x: Value | Number) -> Value:
        return x if isinstance(x, Value) else Value(x)

    # --- operations: each defines its local derivative -------------------------------------
    def __add__(self, other: Value | Number) -> Value:
        other = Value._lift(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:  # d(a+b)/da = 1, d(a+b)/db = 1
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other: Value | Number) -> Value:
        other = Value._lift(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:  # d(a*b)/da = b, d(a*b)/db = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, exponent: Number) -> Value:
        if not isinstance(exponent, int | float):
            raise TypeError(f"only constant exponents are supported, got {type(exponent).__name__}")
        if self.data < 0 and not float(exponent).is_integer():
            raise ValueError(f"{self.data} ** {exponent} is not a real number")
        if self.data == 0 and exponent < 0:
            raise ZeroDivisionError(f"0 ** {exponent} is undefined")
        out = Value(self.data**exponent, (self,), f"**{exponent}")

        def _backward() -> None:  # d(x^n)/dx = n x^(n-1)
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward() -> None:  # d(e^x)/dx = e^x
            self.grad += out.data * out.grad

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward() -> None:  # d tanh(x)/dx = 1 - tanh(x)^2
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def _backward() -> None:  # 1 where x > 0, else 0
            self.grad += (self.data > 0) * out.grad

        out._backward = _backward
        return out

    # --- everything else is built from the operations above -----------------------------------
    def __neg__(self) -> Value:
        return self * -1

    def __sub__(self, other: Value | Number) -> Value:
        return self + (-Value._lift(other))

    def __truediv__(self, other: Value | Number) -> Value:
        other = Value._lift(other)
        if other.data == 0:
            raise ZeroDivisionError(f"division of {self.data} by a Value equal to 0")
        return self * other**-1

    def __radd__(self, other: Number) -> Value:
        return self + other

    def __rsub__(self, other: Number) -> Value:
        return Value._lift(other) - self

    def __rmul__(self, other: Number) -> Value:
        return self * other

    def __rtruediv__(self, other: Number) -> Value:
        return Value._lift(other) / self

    # --- backpropagation ---------------------------------------------------------------------
    def topological_order(self) -> list[Value]:
        """Every node reachable from self, each after all of its parents (iterative DFS)."""
        order: list[Value] = []
        visited: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if id(p) not in visited)
        return order

    def backward(self) -> None:
        """Fill `.grad` of every node in the graph with d(self)/d(node)."""
        order = self.topological_order()
        for node in order:
            node.grad = 0.0
        self.grad = 1.0  # d(self)/d(self)
        for node in reversed(order):
            node._backward()
