"""Week 0: the PyTorch training loop by hand (MNIST), int8 quantization, and micrograd.

Libraries: `mnist` (loading, three sources), `models` (MLP, CNN), `training` (augmentation,
prediction, scores), `int8` (per-channel int8 by hand, torchao), `plots`, `micrograd/`.
Scripts (`python -m week0_pytorch.<name>`): data, train, quantize, micrograd.train.
"""

from week0_pytorch.int8 import quantize_model_by_hand, quantize_per_channel
from week0_pytorch.mnist import load_mnist, to_float
from week0_pytorch.models import MODELS, build_model

__all__ = [
    "MODELS",
    "build_model",
    "load_mnist",
    "quantize_model_by_hand",
    "quantize_per_channel",
    "to_float",
]
