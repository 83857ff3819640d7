"""The adapter activations by name: the one Python list of them (docs/design.md, "Grouped GEMMs").

``ops.ACTIVATIONS`` and ``PESCConfig`` validation read the names from here; the compiled kernels
carry the same list (``csrc/adapter/activations.h``), and a test checks that the two agree.
"""
import torch.nn.functional as F

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as the paper and the official code use
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "identity": lambda h: h,
}


def activation_fn(name: str):
    """The activation function called ``name`` (ValueError listing the valid names otherwise)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
