"""What a daemon's snapshot holds, typed: :class:`DaemonSnapshot`.

The file it is stored in (format :data:`~.snapshot.FORMAT`, which reads the older
``streamlstm.snapshot/1`` too) is :mod:`.snapshot`'s; :meth:`DaemonSnapshot.to_tree` and
:meth:`DaemonSnapshot.from_tree` are the only places its tree is built and read. A fleet
partition's snapshot adds to it (:class:`streamlstm.fleet.snapshots.PartitionSnapshot`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..detect.state import AnyDetectorState, detector_state_from_tree
from ..errors import ShapeError
from .sensortable import SensorColumns


@dataclass(frozen=True)
class DaemonSnapshot:
    """The detector's state, the per-sensor records (:class:`~.sensortable.SensorColumns`)
    and ``model_sha256``, the digest of the weight file the state was made with. The
    detector's state carries its own layout version (:attr:`DetectorState.VERSION
    <streamlstm.detect.DetectorState.VERSION>`)."""

    model_sha256: str
    detector: AnyDetectorState
    sensors: SensorColumns

    def to_tree(self) -> dict[str, Any]:
        """The snapshot as the tree :func:`.snapshot.save` stores."""
        return {
            "model_sha256": self.model_sha256,
            "detector": self.detector.to_tree(),
            "sensors": self.sensors.to_tree(),
        }

    @classmethod
    def from_tree(cls, tree: Any) -> DaemonSnapshot:
        """Read :meth:`to_tree` output (from :func:`.snapshot.load`); :class:`ShapeError`
        naming what is missing or malformed."""
        if not isinstance(tree, Mapping) or "detector" not in tree:
            raise ShapeError("snapshot: no detector state in it (not a daemon's snapshot?)")
        sha = tree.get("model_sha256")
        if not isinstance(sha, str):
            raise ShapeError(f"snapshot: model_sha256 must be a string, got {sha!r:.40}")
        return DaemonSnapshot(
            sha,
            detector_state_from_tree(tree["detector"]),
            SensorColumns.from_tree(tree.get("sensors", {})),
        )
