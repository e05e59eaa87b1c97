"""What a detector's ``export_state`` returns and ``import_state`` takes: typed, versioned.

:class:`DetectorState` (a :class:`~streamlstm.detect.Detector`'s) and
:class:`WindowDetectorState` (a :class:`~streamlstm.detect.WindowDetector`'s) are frozen
dataclasses of per-sensor arrays, row ``i`` of each belonging to ``sensors[i]``, with the
version of their layout. ``to_tree()`` / ``from_tree()`` convert them to and from the plain
tree (dicts and lists of JSON values and NumPy arrays, or lists after ``.tolist()``) that a
snapshot file (:mod:`streamlstm.daemon.snapshot`) or a JSON document holds; nothing else
sees that tree. Building one checks what needs no model (the version, sensor ids, array
kinds, a row per sensor); ``import_state`` checks the rest against the model (row shapes,
finite values) before it changes anything.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._sensor_rows import stored_sensor_ids
from ..errors import ShapeError

#: NumPy dtype kinds a count or flag array may have, and a value array.
_INTEGER, _REAL = "iu", "iuf"


def _checked_rows(
    what: str, sensors: Sequence[Hashable], arrays: Mapping[str, Any], kinds: Mapping[str, str]
) -> None:
    """Raise :class:`ShapeError` unless every array of ``kinds`` is numeric of its kind with
    one row per sensor (arrays that are None are left out)."""
    for name, kind in kinds.items():
        array = arrays[name]
        if array is None:
            continue
        if not isinstance(array, np.ndarray) or array.dtype.kind not in kind:
            raise ShapeError(
                f"{what}: {name} must be an array of "
                f"{'integers' if kind == _INTEGER else 'numbers'}, got "
                f"{getattr(array, 'dtype', type(array).__name__)}"
            )
        if array.ndim == 0 or array.shape[0] != len(sensors):
            raise ShapeError(
                f"{what}: {name} has shape {array.shape}, not one row per sensor "
                f"({len(sensors)} sensors)"
            )


def _tree_arrays(what: str, tree: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``names`` from a stored tree as arrays (lists, as JSON holds them, converted)."""
    try:
        return {name: np.asarray(tree[name]) for name in names}
    except KeyError as exc:
        raise ShapeError(f"{what}: missing field {exc}") from None
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise ShapeError(f"{what}: malformed field ({exc})") from None


def _tree_field(what: str, tree: Mapping[str, Any], name: str, kind: type) -> Any:
    """``tree[name]``, which must be exactly a ``kind``."""
    value = tree.get(name) if isinstance(tree, Mapping) else None
    if type(value) is not kind:
        raise ShapeError(f"{what}: {name} must be of type {kind.__name__}, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class DetectorState:
    """Every sensor's recurrent and detector state (:meth:`Detector.export_state
    <streamlstm.detect.Detector.export_state>`): the bank's ``states`` and ``rejected``
    counts, the alert machine's ``istate``/``fstate``, the last ``preds``, the adapted
    ``levels`` and the feature ``rings``. Version 3; version 2 (written before drift
    adaptation) has no ``levels``, which restore as zero."""

    VERSION: ClassVar[int] = 3
    READABLE: ClassVar[tuple[int, ...]] = (2, 3)
    #: The per-sensor arrays, in the order they are stored.
    ROW_ARRAYS: ClassVar[tuple[str, ...]] = (
        "states",
        "rejected",
        "istate",
        "fstate",
        "preds",
        "levels",
        "rings",
    )
    _KINDS: ClassVar[dict[str, str]] = {
        "states": _REAL,
        "rejected": _INTEGER,
        "istate": _INTEGER,
        "fstate": _REAL,
        "preds": _REAL,
        "levels": _REAL,
        "rings": _REAL,
    }
    _WHAT: ClassVar[str] = "detector snapshot"

    model_id: str
    sensors: list[Hashable]
    states: np.ndarray
    rejected: np.ndarray
    istate: np.ndarray
    fstate: np.ndarray
    preds: np.ndarray
    levels: np.ndarray | None  # None only in version 2
    rings: np.ndarray
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version not in self.READABLE:
            raise ShapeError(
                f"{self._WHAT}: unsupported version {self.version} "
                f"(this release reads {self.READABLE})"
            )
        if self.levels is None and self.version != 2:
            raise ShapeError(f"{self._WHAT}: version {self.version} needs its levels")
        _checked_rows(self._WHAT, self.sensors, self.arrays(), self._KINDS)

    def arrays(self) -> dict[str, np.ndarray | None]:
        """The per-sensor arrays by name (:data:`ROW_ARRAYS` order)."""
        return {name: getattr(self, name) for name in self.ROW_ARRAYS}

    def to_tree(self) -> dict[str, Any]:
        """The state as a snapshot tree (the layout of its version)."""
        arrays = {k: v for k, v in self.arrays().items() if v is not None}
        return {
            "version": self.version,
            "model_id": self.model_id,
            "sensors": self.sensors,
            **arrays,
        }

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> DetectorState:
        """Read :meth:`to_tree` output (versions :data:`READABLE`); :class:`ShapeError`
        naming what is missing or malformed."""
        version = _tree_field(cls._WHAT, tree, "version", int)
        if version not in cls.READABLE:
            raise ShapeError(
                f"{cls._WHAT}: unsupported version {version} (this release reads {cls.READABLE})"
            )
        # Version 2 may lack the levels (written before drift adaptation existed).
        names = [n for n in cls.ROW_ARRAYS if n != "levels" or version != 2 or n in tree]
        arrays = _tree_arrays(cls._WHAT, tree, names)
        return cls(
            model_id=_tree_field(cls._WHAT, tree, "model_id", str),
            sensors=stored_sensor_ids(cls._WHAT, tree.get("sensors")),
            version=version,
            **{"levels": None, **arrays},
        )


@dataclass(frozen=True)
class WindowDetectorState:
    """Every sensor's window ring, counters and alert state
    (:meth:`WindowDetector.export_state <streamlstm.detect.WindowDetector.export_state>`):
    the :class:`~streamlstm.windows.WindowBank`'s rows (``ring``, ``counts``, ``last_bad``,
    ``rejected``, ``skipped``, ``failed``) and the alert machine's ``istate``/``fstate``.
    Version 1, stored with ``kind = "window"``."""

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "window"
    #: The window bank's per-sensor arrays (:meth:`WindowBank.row_arrays
    #: <streamlstm.windows.WindowBank.row_arrays>`), then the detector's.
    BANK_ARRAYS: ClassVar[tuple[str, ...]] = (
        "ring",
        "counts",
        "last_bad",
        "rejected",
        "skipped",
        "failed",
    )
    ROW_ARRAYS: ClassVar[tuple[str, ...]] = (*BANK_ARRAYS, "istate", "fstate")
    _KINDS: ClassVar[dict[str, str]] = {
        "ring": _REAL,
        "counts": _INTEGER,
        "last_bad": _INTEGER,
        "rejected": _INTEGER,
        "skipped": _INTEGER,
        "failed": _INTEGER,
        "istate": _INTEGER,
        "fstate": _REAL,
    }
    _WHAT: ClassVar[str] = "window detector snapshot"

    model_id: str
    sensors: list[Hashable]
    ring: np.ndarray
    counts: np.ndarray
    last_bad: np.ndarray
    rejected: np.ndarray
    skipped: np.ndarray
    failed: np.ndarray
    istate: np.ndarray
    fstate: np.ndarray
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != self.VERSION:
            raise ShapeError(
                f"{self._WHAT}: unsupported version {self.version} "
                f"(this release reads {self.VERSION})"
            )
        _checked_rows(self._WHAT, self.sensors, self.arrays(), self._KINDS)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-sensor arrays by name (:data:`ROW_ARRAYS` order)."""
        return {name: getattr(self, name) for name in self.ROW_ARRAYS}

    def to_tree(self) -> dict[str, Any]:
        """The state as a snapshot tree."""
        return {
            "version": self.version,
            "model_id": self.model_id,
            "kind": self.KIND,
            "sensors": self.sensors,
            **self.arrays(),
        }

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> WindowDetectorState:
        """Read :meth:`to_tree` output; :class:`ShapeError` naming what is missing or
        malformed, or that it is another kind of detector's state."""
        kind = tree.get("kind") if isinstance(tree, Mapping) else None
        version = tree.get("version") if isinstance(tree, Mapping) else None
        if kind != cls.KIND or type(version) is not int or version != cls.VERSION:
            raise ShapeError(
                f"{cls._WHAT}: unsupported kind {kind!r} / version {version!r} "
                f"(this release reads kind {cls.KIND!r} version {cls.VERSION}; a snapshot "
                "of another kind of detector?)"
            )
        return cls(
            model_id=_tree_field(cls._WHAT, tree, "model_id", str),
            sensors=stored_sensor_ids(cls._WHAT, tree.get("sensors")),
            version=version,
            **_tree_arrays(cls._WHAT, tree, cls.ROW_ARRAYS),
        )


#: Either detector's state (what the daemon's pipeline exports and imports).
AnyDetectorState = DetectorState | WindowDetectorState


def detector_state_from_tree(tree: Any) -> AnyDetectorState:
    """A stored detector state, of the kind its tree says (``kind = "window"`` or none)."""
    if not isinstance(tree, Mapping):
        raise ShapeError(f"detector snapshot: expected a mapping, got {type(tree).__name__}")
    if "kind" in tree:
        return WindowDetectorState.from_tree(tree)
    return DetectorState.from_tree(tree)


def wrong_kind(what: str, state: object, kind: type) -> ShapeError:
    """The error for a ``state`` that is not a ``kind`` (another detector's state)."""
    return ShapeError(
        f"{what}: unsupported kind {type(state).__name__} (expected a {kind.__name__}: "
        "a snapshot of another kind of detector?)"
    )
