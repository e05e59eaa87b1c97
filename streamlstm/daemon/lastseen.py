"""When each sensor was last seen, for evicting idle ones (``[daemon] sensor_idle_s``).

The single daemon counts in host monotonic time; a fleet partition in the stream's own
timestamps, so that eviction is a function of the stream and a replay evicts alike.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class LastSeen:
    """Sensors by the time they were last seen, least recently seen first (O(1) a sighting)."""

    def __init__(self, seen: Iterable[tuple[str, float]] = ()) -> None:
        self._times: OrderedDict[str, float] = OrderedDict(seen)

    def seen(self, sensor: str, at: float) -> None:
        self._times[sensor] = at
        self._times.move_to_end(sensor)

    def due(self, horizon: float) -> bool:
        """Whether some sensor was last seen at or before ``horizon``."""
        return bool(self._times) and next(iter(self._times.values())) <= horizon

    def expire(self, horizon: float) -> list[str]:
        """Forget and return the sensors last seen at or before ``horizon``, oldest first."""
        expired = []
        while self.due(horizon):
            expired.append(self._times.popitem(last=False)[0])
        return expired

    def items(self) -> list[tuple[str, float]]:
        """``(sensor, time)`` pairs, least recently seen first."""
        return list(self._times.items())

    def __len__(self) -> int:
        return len(self._times)
