"""surfacekit: empirical loss-surface analysis of neural networks.

The analysis tools on your own model: ``surfacekit.objective_from_module(model, loss, data)`` and
``surfacekit.layer_spectra(...)`` (see :mod:`surfacekit.module_objective`; imported on first use).
"""

__version__ = "0.1.0"

_LAZY = {"objective_from_module": "surfacekit.module_objective", "ModuleObjective": "surfacekit.module_objective",
         "layer_spectra": "surfacekit.module_objective"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'surfacekit' has no attribute {name!r}")
