"""Training recipe for a next-step LSTM predictor on normal data (the ``train`` extra: torch).

Importing this package is free; torch is imported when :func:`train` is first used:

>>> from streamlstm.train import train          # doctest: +SKIP
>>> result = train(normal, hidden=32, seed=0)    # doctest: +SKIP
>>> result.model.calibration["threshold"]        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
