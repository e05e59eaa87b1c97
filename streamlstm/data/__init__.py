"""Data shipped inside the package: the default model and the demo recording.

``demo.npz`` (see ``README.md`` here for provenance and licence) holds ``samples``
``(T, 3)`` float32 acceleration in g (x, y, z), ``t`` ``(T,)`` float64 seconds, ``label``
``(T,)`` int8 (0 normal, 1 anomalous), ``fs_hz`` and ``channels``. It is a normal
stretch followed by an anomalous one, meant to be streamed as one sensor through the
default model ``weights/accel-default.npz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

DEMO_PATH = Path(__file__).with_name("demo.npz")
#: The default model, byte-identical to ``weights/accel-default.npz`` (model card there).
DEFAULT_MODEL_PATH = Path(__file__).with_name("accel-default.npz")


class DemoRecording(NamedTuple):
    samples: np.ndarray  # (T, 3) float32, g
    t: np.ndarray  # (T,) float64, seconds from the start
    label: np.ndarray  # (T,) int8, 0 normal / 1 anomalous
    fs_hz: float
    channels: tuple[str, ...]


def load_demo() -> DemoRecording:
    """The shipped demo recording (read without pickle)."""
    with np.load(DEMO_PATH, allow_pickle=False) as f:
        return DemoRecording(
            f["samples"],
            f["t"],
            f["label"],
            float(f["fs_hz"]),
            tuple(str(c) for c in f["channels"]),
        )
