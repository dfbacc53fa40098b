"""Week 0: the PyTorch training loop by hand (MNIST), int8 quantization, and micrograd."""
