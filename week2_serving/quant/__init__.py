"""Quantization: INT8 W8A8 and INT4 AWQ variants of the week 1 model, and their quality."""
