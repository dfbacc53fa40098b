"""micrograd against PyTorch in float64: values and gradients of random expressions."""

from __future__ import annotations

import random

import pytest
import torch

from week0_pytorch.micrograd import Value
from week0_pytorch.micrograd.moons import make_moons
from week0_pytorch.micrograd.nn import MLP
from week0_pytorch.micrograd.train import MoonsConfig, main

UNARY = ["relu", "tanh", "exp", "neg", "pow2", "pow3", "inv", "sqrt"]
BINARY = ["add", "sub", "mul", "div", "radd", "rmul", "rsub", "rdiv"]


def random_tree(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.2:
        return ("leaf", rng.randrange(3)) if rng.random() < 0.85 else ("const", rng.uniform(-2, 2))
    if rng.random() < 0.4:
        return (rng.choice(UNARY), random_tree(rng, depth - 1))
    return (rng.choice(BINARY), random_tree(rng, depth - 1), random_tree(rng, depth - 1))


def evaluate(tree, leaves, const):
    """Evaluate one tree on micrograd Values or torch tensors alike; None if out of domain."""
    op = tree[0]
    if op == "leaf":
        return leaves[tree[1]]
    if op == "const":
        return const(tree[1])
    args = [evaluate(t, leaves, const) for t in tree[1:]]
    if any(a is None for a in args):
        return None
    val = lambda a: a.data if isinstance(a, Value) else a.item()
    a = args[0]
    if op in UNARY:
        if op in ("inv", "sqrt") and val(a) < 0.2:
            return None  # keep away from 1/0 and sqrt of negatives
        if op == "exp" and val(a) > 5:
            return None
        return {
            "relu": lambda: a.relu(),
            "tanh": lambda: a.tanh(),
            "exp": lambda: a.exp(),
            "neg": lambda: -a,
            "pow2": lambda: a**2,
            "pow3": lambda: a**3,
            "inv": lambda: a**-1,
            "sqrt": lambda: a**0.5,
        }[op]()
    b = args[1]
    if op in ("div", "rdiv") and abs(val(b)) < 0.2:
        return None
    c = 1.7  # a plain Python number on the other side exercises __radd__ etc.
    return {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "div": lambda: a / b,
        "radd": lambda: c + a,
        "rmul": lambda: c * a,
        "rsub": lambda: c - a,
        "rdiv": lambda: c / b,
    }[op]()


def test_random_expressions_match_pytorch_float64():
    rng = random.Random(1234)
    checked = 0
    while checked < 40:
        tree = random_tree(rng, depth=5)
        xs = [rng.uniform(-2, 2) for _ in range(3)]
        mg = [Value(x) for x in xs]
        out = evaluate(tree, mg, Value)
        pt = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
        ref = evaluate(tree, pt, lambda c: torch.tensor(c, dtype=torch.float64))
        if out is None or ref is None or not isinstance(ref, torch.Tensor) or not ref.requires_grad:
            continue
        if abs(ref.item()) > 1e6:
            continue
        out.backward()
        ref.backward()
        assert out.data == pytest.approx(ref.item(), abs=1e-6, rel=1e-6), tree
        for v, p in zip(mg, pt):
            g = 0.0 if p.grad is None else p.grad.item()
            assert v.grad == pytest.approx(g, abs=1e-6, rel=1e-6), tree
        checked += 1
    assert checked == 40


def test_shared_subexpression_accumulates_gradient():
    a = Value(3.0)
    b = a * a + a  # da = 2a + 1
    c = b * b  # dc/da = 2b (2a + 1)
    c.backward()
    assert a.grad == pytest.approx(2 * 12 * 7)
    c.backward()  # a second backward recomputes, it does not double-count
    assert a.grad == pytest.approx(2 * 12 * 7)


def test_mlp_matches_torch_forward_and_backward():
    model = MLP(3, [4, 4, 1], seed=0)
    x = [0.5, -1.0, 2.0]
    out = model(x)[0]
    out.backward()
    # rebuild the same network in torch float64
    tx = torch.tensor(x, dtype=torch.float64)
    params, h = [], tx
    for i, layer in enumerate(model.layers):
        W = torch.tensor(
            [[w.data for w in n.w] for n in layer.neurons], dtype=torch.float64, requires_grad=True
        )
        bvec = torch.tensor(
            [n.b.data for n in layer.neurons], dtype=torch.float64, requires_grad=True
        )
        params.append((W, bvec))
        h = W @ h + bvec
        if i < len(model.layers) - 1:
            h = torch.relu(h)
    h.sum().backward()
    assert out.data == pytest.approx(h.item(), abs=1e-9)
    for layer, (W, bvec) in zip(model.layers, params):
        for r, n in enumerate(layer.neurons):
            assert [w.grad for w in n.w] == pytest.approx(W.grad[r].tolist(), abs=1e-9)
            assert n.b.grad == pytest.approx(bvec.grad[r].item(), abs=1e-9)


def test_bad_input_errors():
    with pytest.raises(TypeError, match="Python number"):
        Value("3")
    with pytest.raises(ZeroDivisionError):
        Value(1.0) / Value(0.0)
    with pytest.raises(ValueError, match="not a real number"):
        Value(-2.0) ** 0.5
    with pytest.raises(ValueError, match="expects 3 inputs"):
        MLP(3, [2])([1.0])


def test_moons_are_balanced_and_deterministic():
    xs, ys = make_moons(50, seed=3)
    assert len(xs) == 50 and sum(ys) == 25
    assert make_moons(50, seed=3) == (xs, ys)


def test_mlp_learns_the_moons(runs_dir):
    res = main(MoonsConfig(n_samples=50, hidden=(8, 8), steps=60, plot_resolution=10))
    assert res["train_accuracy"] >= 0.95
    assert (runs_dir / "week0" / "micrograd" / "decision_boundary.png").exists()
