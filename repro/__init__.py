"""repro-transfer: a Caffe-faithful PyTorch reproduction of Yosinski et al. (NIPS 2014),
"How transferable are features in deep neural networks?".

The public API is pycaffe-shaped: ``repro.Net`` and ``repro.Solver``.
"""

__version__ = "0.1.0"

__all__ = ["Net", "Solver", "__version__"]


def __getattr__(name):
    # Lazy imports keep `import repro` cheap (no torch import for tools that only parse text).
    if name == "Net":
        from .net import Net

        return Net
    if name == "Solver":
        from .solver import Solver

        return Solver
    raise AttributeError(f"module 'repro' has no attribute {name!r}")
