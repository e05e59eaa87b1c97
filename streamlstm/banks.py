"""The API a bank of streams offers, whichever device holds its state: a :class:`typing.Protocol`.

:class:`~streamlstm.bank.Bank` (CPU) and :class:`~streamlstm.cuda.CudaBank` (GPU) both
satisfy :class:`StreamBank` structurally (neither inherits from it); code written against
it (the daemon's compute loop, a benchmark) runs on either. ``isinstance(bank, StreamBank)``
checks that the members exist, not their signatures.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ._samples import as_samples
from ._sensor_rows import stored_sensor_ids
from .errors import ShapeError
from .model import Model


@dataclass(frozen=True)
class BankState:
    """Every sensor's recurrent state, as any bank exports it: ``states[i]`` (a flat
    ``(S,)`` row, the layout of :attr:`streamlstm.Stream.state_vector`) belongs to
    ``sensors[i]``. Version 1; ``to_tree()`` / ``from_tree()`` convert to and from a plain
    dict of a list and an array (npz- or JSON-able) for storage."""

    VERSION: ClassVar[int] = 1

    sensors: list[Hashable]
    states: np.ndarray  # (n, S)
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != self.VERSION:
            raise ShapeError(
                f"bank snapshot: unsupported version {self.version} "
                f"(this release reads {self.VERSION})"
            )
        if not isinstance(self.states, np.ndarray) or self.states.dtype.kind not in "iuf":
            raise ShapeError("bank snapshot: states must be an array of numbers")
        if self.states.ndim != 2 or self.states.shape[0] != len(self.sensors):
            raise ShapeError(
                f"bank snapshot: {len(self.sensors)} sensors for states of shape "
                f"{self.states.shape}"
            )

    @property
    def state_size(self) -> int:
        """``S``, the length of one sensor's state row."""
        return int(self.states.shape[1])

    def checked_states(self, dtype: np.dtype, width: int) -> np.ndarray:
        """The state rows as ``dtype``, checked for a bank whose rows are ``width`` long:
        :class:`ShapeError` for another width or a non-finite value."""
        states = as_samples(self.states, dtype, width, what="snapshot states")
        if not np.all(np.isfinite(states)):
            raise ShapeError("snapshot: non-finite state values")
        return states

    def to_tree(self) -> dict[str, Any]:
        """``{"version", "sensors", "states", "state_size"}`` for storage."""
        return {
            "version": self.version,
            "sensors": list(self.sensors),
            "states": self.states,
            "state_size": self.state_size,
        }

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> BankState:
        """Read :meth:`to_tree` output (a tree without ``version``, from before the typed
        state, is version 1); :class:`ShapeError` if it is malformed."""
        try:
            sensors, states = tree["sensors"], np.asarray(tree["states"])
            version = tree.get("version", cls.VERSION)
        except (KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"bank snapshot: missing or malformed field ({exc})") from None
        return cls(stored_sensor_ids("bank snapshot", sensors), states, version)


@runtime_checkable
class StreamBank(Protocol):
    """Many streams (sensors) of one model, each sensor's state in a row of the bank.

    Differences from :class:`~streamlstm.stream.Stream`, whose API a bank's per-sensor
    methods otherwise follow: a bank holds many states, so what is an attribute of a
    stream is a method taking the sensor id here. :meth:`state` and :meth:`state_vector`
    (properties with setters on a stream) are methods, the setters :meth:`set_state` and
    :meth:`set_state_vector`; :meth:`rejected` (an ``int`` attribute on a stream) is a
    method; :meth:`run` takes ``(N, T, D)`` for ``N`` distinct sensors where a stream's
    takes ``(T, D)``; a bank never raises for a NaN/Inf sample (a stream's ``on_invalid``
    defaults to ``"raise"``): it skips and counts it, and :attr:`last_status` says why.
    Beyond this protocol the CPU bank has ``threads``, :meth:`Bank.kernel_args` and
    :attr:`Bank.row_table`; the GPU bank has ``kernel``, ``last_launch``, ``stream``,
    ``repeat_launch()`` and ``synchronize()``.
    """

    model: Model
    #: Per-sample status codes of the latest :meth:`step` (``(M,)``) or :meth:`run`
    #: (``(N, T)``): :data:`~streamlstm.kernels.OK` or why the sample was rejected.
    last_status: np.ndarray

    @property
    def capacity(self) -> int:
        """Rows the bank holds now (it doubles when every row is taken)."""
        ...

    @property
    def sensors(self) -> list[Hashable]:
        """Known sensor ids in row-allocation order."""
        ...

    @property
    def row_bound(self) -> int:
        """One past the highest row ever handed out."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, sensor: Hashable) -> bool: ...

    def row(self, sensor: Hashable) -> int:
        """``sensor``'s row, allocated (zero state) on first sight."""
        ...

    def rows(self, sensors: Iterable[Hashable]) -> np.ndarray:
        """Rows of many sensors (``int64``), allocating new ones in order of first sight."""
        ...

    def known_row(self, sensor: Hashable) -> int:
        """The row of a known sensor; :class:`KeyError` if unknown."""
        ...

    def assigned_rows(self) -> tuple[list[Hashable], np.ndarray]:
        """Known sensor ids and their rows."""
        ...

    def forget(self, sensor: Hashable) -> None:
        """Drop ``sensor``; its row is cleared and reused."""
        ...

    def forget_many(self, sensors: Iterable[Hashable]) -> np.ndarray:
        """Drop several sensors (unknown ids ignored); returns their freed rows."""
        ...

    def step(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> np.ndarray:
        """A micro-batch in arrival order: ``(M, D)`` samples -> ``(M, O)`` predictions."""
        ...

    def step_rows(self, rows: np.ndarray, samples: Any) -> np.ndarray:
        """:meth:`step` with rows from :meth:`rows` instead of sensor ids."""
        ...

    def run(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> np.ndarray:
        """Block mode: ``(N, T, D)`` for ``N`` distinct sensors -> ``(N, T, O)``."""
        ...

    def rejected(self, sensor: Hashable) -> int:
        """How many of ``sensor``'s samples were rejected."""
        ...

    def state(self, sensor: Hashable) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Per-layer copies of ``sensor``'s ``(h, c)``."""
        ...

    def set_state(self, sensor: Hashable, h: Any, c: Any) -> None:
        """Overwrite ``sensor``'s ``(h, c)`` (allocating its row if new)."""
        ...

    def state_vector(self, sensor: Hashable) -> np.ndarray:
        """A copy of ``sensor``'s flat ``(S,)`` state."""
        ...

    def set_state_vector(self, sensor: Hashable, vector: Any) -> None:
        """Overwrite ``sensor``'s flat state (allocating its row if new)."""
        ...

    def reset(self, sensor: Hashable | None = None) -> None:
        """Zero one sensor's state, or every sensor's."""
        ...

    def export_state(self) -> BankState:
        """Every sensor's state, the same on every device."""
        ...

    def import_state(self, state: BankState) -> None:
        """Restore sensors from any bank's :meth:`export_state` (other sensors are kept)."""
        ...
