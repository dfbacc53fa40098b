"""Neuron, Layer, MLP on top of `Value`: the same structure as torch.nn, with scalars."""

from __future__ import annotations

import random

from week0_pytorch.micrograd.engine import Value


class Module:
    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """out = act(w · x + b), weights drawn uniformly from [-1, 1], bias 0.

    (Wide ±1 weights keep most ReLUs alive in these tiny nets; with ±1/sqrt(n_in) the moons
    MLP gets stuck near a linear boundary — try it.)"""

    def __init__(self, n_in: int, activation: str = "relu", rng: random.Random | None = None):
        if activation not in ("relu", "tanh", "linear"):
            raise ValueError(f"activation {activation!r}: use relu, tanh or linear")
        rng = rng or random.Random(0)
        self.w = [Value(rng.uniform(-1.0, 1.0)) for _ in range(n_in)]
        self.b = Value(0.0)
        self.activation = activation

    def __call__(self, x: list[Value | float]) -> Value:
        if len(x) != len(self.w):
            raise ValueError(f"neuron expects {len(self.w)} inputs, got {len(x)}")
        act = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        if self.activation == "relu":
            return act.relu()
        if self.activation == "tanh":
            return act.tanh()
        return act

    def parameters(self) -> list[Value]:
        return self.w + [self.b]


class Layer(Module):
    def __init__(
        self, n_in: int, n_out: int, activation: str = "relu", rng: random.Random | None = None
    ):
        self.neurons = [Neuron(n_in, activation, rng) for _ in range(n_out)]

    def __call__(self, x: list[Value | float]) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]


class MLP(Module):
    """Layers of sizes n_in -> sizes[0] -> ... -> sizes[-1]; the last layer is linear."""

    def __init__(self, n_in: int, sizes: list[int], seed: int = 0):
        rng = random.Random(seed)
        dims = [n_in] + sizes
        self.layers = [
            Layer(dims[i], dims[i + 1], "relu" if i < len(sizes) - 1 else "linear", rng)
            for i in range(len(sizes))
        ]

    def __call__(self, x: list[Value | float]) -> list[Value]:
        out: list = list(x)
        for layer in self.layers:
            out = layer(out)
        return out

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]
