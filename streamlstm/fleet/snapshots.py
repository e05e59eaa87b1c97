"""Per-partition state snapshots with the stream sequence they cover, fenced by epochs.

One key per partition (``p.<p>``) in the state bucket holds a record: the ownership
*epoch*, the owner, the last stream sequence applied (``seq``), the next alert sequence,
and the state itself (a :class:`PartitionSnapshot`, as npz bytes in the format of
:mod:`streamlstm.daemon.snapshot`): inline after the record's JSON line when small, else
in the object store under a name of its own. Every write is an ``update`` checked against
the revision the writer last saw.
A new owner first *claims* the partition (rewrites the record with the next epoch), so a
deposed owner's late write fails its revision check however the two interleave.

An object is written before the record that names it, and the previous one deleted after:
a crash in between leaves an object no record names. Claiming a partition deletes its
objects of earlier epochs that its record does not name (never a later epoch's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import nats.js.errors
import numpy as np
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ..daemon import snapshot
from ..daemon.snapshot_state import DaemonSnapshot
from ..errors import ShapeError, StreamLSTMError
from .config import FleetSettings

log = logging.getLogger(__name__)

RECORD_FORMAT = "streamlstm.fleet-partition/1"
OBJECT_READ_ATTEMPTS = 5
STATE_PREFIX = "p."
#: Object names: ``p<partition>-e<epoch>-s<seq>``.
OBJECT_NAME = re.compile(r"p(\d+)-e(\d+)-s(\d+)")


class WriteRefused(Exception):
    """A snapshot write failed its revision check: another worker claimed the partition."""


@dataclass(frozen=True)
class SnapshotRecord:
    """The JSON head of a partition's record (the state travels beside it)."""

    partition: int
    epoch: int
    owner: str
    seq: int = 0  # last stream sequence the state covers (0: none)
    alert_seq: int = 0  # alert seq numbers taken so far in this partition
    written: float = 0.0  # wall-clock time of the state write
    object: str | None = None  # object-store name, None when inline (or no state)
    bytes: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class PartitionSnapshot(DaemonSnapshot):
    """A partition's state: a daemon's (:class:`~streamlstm.daemon.snapshot_state.
    DaemonSnapshot`), each sensor's last-seen time on the stream's clock (least recently
    seen first) and the alert records its owner had not seen acknowledged (sent again by
    the next owner). Its epoch and the sequence it covers are in its
    :class:`SnapshotRecord`."""

    last_seen: list[tuple[str, float]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_tree(self) -> dict[str, Any]:
        """The snapshot as the tree :func:`streamlstm.daemon.snapshot.encode` stores."""
        return {
            **super().to_tree(),
            "last_seen": {
                "names": [name for name, _ in self.last_seen],
                "t": np.array([t for _, t in self.last_seen], np.float64),
            },
            "alerts": self.alerts,
        }

    @classmethod
    def from_tree(cls, tree: Any) -> PartitionSnapshot:
        """Read :meth:`to_tree` output; :class:`ShapeError` naming what is malformed. Alerts
        that are not records are dropped (:meth:`WorkerSinks.resend
        <streamlstm.fleet.alerts.WorkerSinks.resend>` checks the rest)."""
        base = DaemonSnapshot.from_tree(tree)
        seen = tree.get("last_seen", {"names": [], "t": []})
        try:
            last_seen = list(zip(seen["names"], map(float, seen["t"]), strict=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"partition snapshot: malformed last_seen ({exc})") from None
        if not all(type(name) is str for name, _ in last_seen):
            raise ShapeError("partition snapshot: a last_seen name is not a string")
        alerts = tree.get("alerts")
        return cls(
            base.model_sha256,
            base.detector,
            base.sensors,
            last_seen,
            [r for r in alerts if isinstance(r, dict)] if isinstance(alerts, list) else [],
        )


@dataclass
class Claim:
    """A partition claimed for one epoch: what to restore and the revision to write on."""

    record: SnapshotRecord
    revision: int
    previous_epoch: int | None  # None: the partition was never owned
    state: PartitionSnapshot | None = field(default=None, repr=False)
    problem: str | None = None  # why a stored state could not be read (then state is None)


def _encode(record: SnapshotRecord, inline: bytes = b"") -> bytes:
    return json.dumps({"format": RECORD_FORMAT, **record.__dict__}).encode() + b"\n" + inline


def decode_record(value: bytes) -> tuple[SnapshotRecord, bytes]:
    """A stored value -> its record and inline state bytes (ValueError if malformed)."""
    head, _, inline = value.partition(b"\n")
    fields = json.loads(head)
    if not isinstance(fields, dict) or fields.pop("format", None) != RECORD_FORMAT:
        raise ValueError(f"not a {RECORD_FORMAT} record")
    return SnapshotRecord(**fields), inline


class SnapshotStore:
    """Claims, reads and writes the partitions' snapshots."""

    def __init__(self, kv: KeyValue, objects: ObjectStore, settings: FleetSettings) -> None:
        self._kv = kv
        self._objects = objects
        self._settings = settings

    async def read(self, partition: int) -> tuple[SnapshotRecord, int, PartitionSnapshot | None]:
        """The record, its revision and the decoded state; KeyNotFoundError if none,
        :class:`~streamlstm.errors.StreamLSTMError` if the state is unreadable."""
        entry = await self._kv.get(f"{STATE_PREFIX}{partition}")
        record, inline = decode_record(entry.value or b"")
        return record, entry.revision or 0, await self._state(record, inline)

    async def read_record(self, partition: int) -> tuple[SnapshotRecord, int]:
        """The record and its revision, without the state; KeyNotFoundError if none."""
        entry = await self._kv.get(f"{STATE_PREFIX}{partition}")
        return decode_record(entry.value or b"")[0], entry.revision or 0

    async def _state(self, record: SnapshotRecord, inline: bytes) -> PartitionSnapshot | None:
        if record.object is not None:
            data = await self._object(record.object)
        elif inline:
            data = inline
        else:
            return None
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise snapshot.SnapshotError(
                f"partition {record.partition}: snapshot checksum does not match its record"
            )
        return PartitionSnapshot.from_tree(
            snapshot.decode(data, f"partition {record.partition} snapshot")
        )

    async def _object(self, name: str) -> bytes:
        """An object's bytes. The object store answers from any replica, and one that lags
        may not have a just-written object yet: look again a few times before giving up."""
        for _ in range(OBJECT_READ_ATTEMPTS - 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                return (await self._objects.get(name)).data or b""
            await asyncio.sleep(0.2)
        return (await self._objects.get(name)).data or b""

    async def claim(self, partition: int) -> Claim:
        """Start the next epoch of ``partition`` for this worker (revision-checked);
        :class:`WriteRefused` if another worker claimed it meanwhile."""
        key = f"{STATE_PREFIX}{partition}"
        owner = self._settings.worker_id
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            record = SnapshotRecord(partition, 1, owner)
            try:
                revision = await self._kv.create(key, _encode(record))
            except nats.js.errors.KeyWrongLastSequenceError:
                raise WriteRefused(f"partition {partition}: claimed by another worker") from None
            return Claim(record, revision, None)
        old, inline = decode_record(entry.value or b"")
        state, problem = None, None
        try:
            state = await self._state(old, inline)
        except (StreamLSTMError, nats.js.errors.NotFoundError) as exc:
            problem = str(exc)
        record = replace(old, epoch=old.epoch + 1, owner=owner)
        try:
            revision = await self._kv.update(key, _encode(record, inline), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise WriteRefused(f"partition {partition}: claimed by another worker") from None
        try:
            await self._delete_orphans(record)
        except Exception as exc:  # tidying only: the next claim tries again
            log.warning(
                "partition %d: orphaned snapshot objects not deleted (%s: %s)",
                partition,
                type(exc).__name__,
                exc,
            )
        return Claim(record, revision, old.epoch, state, problem)

    async def _delete_orphans(self, record: SnapshotRecord) -> None:
        """Delete the partition's objects of epochs before ``record``'s that it does not
        name (left by a crash between an object's write and its record's update)."""
        try:
            objects = await self._objects.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:  # an empty store
            return
        orphans = []
        for info in objects:
            match = OBJECT_NAME.fullmatch(info.name or "")
            if (
                match is not None
                and int(match[1]) == record.partition
                and int(match[2]) < record.epoch
                and info.name != record.object
            ):
                orphans.append(info.name)
        for name in orphans:
            await self._delete_object(name)
        if orphans:
            log.info(
                "partition %d: deleted %d orphaned snapshot object(s): %s",
                record.partition,
                len(orphans),
                ", ".join(orphans[:5]),
            )

    async def write(self, claim: Claim, seq: int, alert_seq: int, state: PartitionSnapshot) -> int:
        """Store ``state`` (covering stream sequences up to ``seq``) for the claimed epoch;
        returns its size. :class:`WriteRefused` if the claim is stale (a zombie's write)."""
        data = snapshot.encode(state.to_tree())
        partition, epoch = claim.record.partition, claim.record.epoch
        name = None
        if len(data) > self._settings.inline_snapshot_bytes:
            name = f"p{partition}-e{epoch}-s{seq}"
            await self._objects.put(name, data)
        record = replace(
            claim.record,
            seq=seq,
            alert_seq=alert_seq,
            written=time.time(),
            object=name,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        try:
            revision = await self._kv.update(
                f"{STATE_PREFIX}{partition}",
                _encode(record, b"" if name else data),
                last=claim.revision,
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            if name is not None:
                await self._delete_object(name)
            raise WriteRefused(f"partition {partition} epoch {epoch}: superseded") from None
        previous = claim.record.object
        claim.record, claim.revision = record, revision
        if previous is not None and previous != name:
            await self._delete_object(previous)
        return len(data)

    async def _delete_object(self, name: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._objects.delete(name)
