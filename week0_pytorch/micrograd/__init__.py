"""micrograd: a scalar autograd engine (engine.py), a tiny neural-net library (nn.py), and a
training script on the two-moons toy set (train.py). What `loss.backward()` does, in ~150 lines."""

from week0_pytorch.micrograd.engine import Value

__all__ = ["Value"]
