"""micrograd: a scalar autograd engine (engine.py), a tiny neural-net library (nn.py), the
two-moons toy set (moons.py) and a training script (train.py). What `loss.backward()` does."""

from week0_pytorch.micrograd.engine import Value
from week0_pytorch.micrograd.moons import make_moons
from week0_pytorch.micrograd.nn import MLP

__all__ = ["MLP", "Value", "make_moons"]
