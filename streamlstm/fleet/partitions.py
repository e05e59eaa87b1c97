"""One owned partition: its detector, its sensors' records, and the sequences it covers.

Everything here is synchronous and runs on the worker's event loop between awaits, so a
batch is applied (stepped, alerts numbered, records updated) as one indivisible step and
:meth:`OwnedPartition.export` always sees a state consistent with :attr:`applied_seq`.

Idle sensors (``[daemon] sensor_idle_s``) are evicted by the stream's clock: before a
message stored at time T is applied, every sensor whose last stepped message was stored at
or before ``T - sensor_idle_s`` goes (its rows freed; if it comes back it starts afresh;
an alert open on it ends with reason ``"evicted"``, numbered like any other alert).
That is a function of the stream alone, whatever the fetch batches, so a replay evicts
exactly as the first pass did, and the last-seen times travel in the snapshots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._ratelimit import RateLimitedLog
from ..daemon.intake import TimestampGate
from ..daemon.lastseen import LastSeen
from ..daemon.pipeline import LoadedModel, Pipeline
from ..daemon.sensortable import (
    SensorColumns,
    batch_arrays,
    forget_sensors,
    last_sample_times,
    record_alert,
    record_batch,
    within_sensor_limit,
)
from ..sinks import SensorState, alert_record
from ..sources import Frame
from ..sources.mqtt import MQTTSource
from ..sources.parsers import ParseError
from .config import FleetSettings
from .snapshots import PartitionSnapshot

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


@dataclass(frozen=True)
class StreamMessage:
    """What the worker needs of one JetStream message."""

    subject: str
    data: bytes
    seq: int  # stream sequence
    pending: int  # messages left in the consumer after this one (the lag)
    time: float = 0.0  # when the stream stored it (s since the epoch): the idle clock


@dataclass
class Applied:
    """The outcome of one batch: sequences covered, samples stepped, alert records."""

    first_seq: int
    last_seq: int
    messages: int
    samples: int
    replayed: int  # messages at or below the previous owner's ack floor (crash replay)
    skipped: int  # redelivered within this epoch (seq already applied): not applied again
    refused: int = 0  # samples of new sensors refused: the partition holds max_sensors
    expired: list[str] = field(default_factory=list)  # idle sensors evicted
    records: list[dict[str, Any]] = field(default_factory=list)


class OwnedPartition:
    """The compute state of one partition for one ownership epoch."""

    def __init__(
        self,
        partition: int,
        epoch: int,
        settings: FleetSettings,
        loaded: LoadedModel,
        pipeline: Pipeline,
        decoder: MQTTSource,
        gate: TimestampGate,
        *,
        seq: int,
        alert_seq: int,
        replay_until: int,
        max_sensors: int,
        sensor_idle_s: float = 0.0,
    ) -> None:
        self.partition = partition
        self.epoch = epoch
        self.settings = settings
        self.loaded = loaded
        self.pipeline = pipeline
        self.decoder = decoder
        self.gate = gate
        self.applied_seq = seq  # last stream sequence applied to the state
        self.alert_seq = alert_seq
        self.replay_until = replay_until  # the deposed owner's ack floor (0: none known)
        self.max_sensors = max_sensors
        self.sensor_idle_s = sensor_idle_s  # 0: never evict
        self.last_seen = LastSeen()
        self.sensors: dict[str, SensorState] = {}
        self.changed: set[str] = set()
        self.lag = 0

    @property
    def daemon_name(self) -> str:
        """The alerts' ``daemon`` field: ``(daemon, seq)`` stays unique across handoffs."""
        return f"{self.settings.name}/p{self.partition}"

    def restore(self, state: PartitionSnapshot) -> None:
        """Load a snapshot's state (raises if it does not fit the model: caller decides)."""
        records = state.sensors.records()
        self.pipeline.import_state(state.detector)
        self.sensors = records
        self.last_seen = LastSeen(state.last_seen)

    def export(self, alerts: list[dict[str, Any]] | None = None) -> PartitionSnapshot:
        """The state to snapshot (covers :attr:`applied_seq`), with the partition's
        unacknowledged ``alerts`` (for its next owner to send)."""
        return PartitionSnapshot(
            self.loaded.sha256,
            self.pipeline.export_state(),
            SensorColumns.from_records(list(self.sensors.values())),
            self.last_seen.items(),
            alerts or [],
        )

    def apply(self, messages: Sequence[StreamMessage]) -> Applied:
        """Decode, gate and step one fetched batch (in stream order); number its alerts."""
        received = time.time()
        applied = Applied(0, 0, 0, 0, 0, 0)
        frames: list[Frame] = []
        stored: dict[str, float] = {}  # sensor -> stream time of its latest frame in `frames`
        chunk_start = 0.0  # stream time of the first of `frames`
        for message in messages:
            if message.seq <= self.applied_seq:
                applied.skipped += 1
                continue
            applied.first_seq = applied.first_seq or message.seq
            applied.last_seq = message.seq
            if message.seq <= self.replay_until:
                applied.replayed += 1
            self.lag = message.pending
            horizon = message.time - self.sensor_idle_s
            # Frames not stepped yet count as seen too: step them first (then they are in
            # last_seen) once the oldest of them could be idle (stepping in parts changes
            # nothing: the detector is exact whatever the batches).
            chunk_old = bool(frames) and chunk_start <= horizon
            if self.sensor_idle_s and (chunk_old or self.last_seen.due(horizon)):
                self._admit_and_step(frames, stored, applied)
                frames, stored = [], {}
                self._evict(self.last_seen.expire(horizon), applied)
            try:
                frame = self._decode(message, received)
            except Exception as exc:  # one bad message is counted, never fatal
                self.decoder.stats.dropped(self.decoder.name, exc)
                continue
            if not frames:
                chunk_start = message.time
            frames.append(frame)
            stored[frame.sensor] = message.time
        applied.messages = len(messages) - applied.skipped
        if applied.last_seq:
            self.applied_seq = applied.last_seq
        self._admit_and_step(frames, stored, applied)
        return applied

    def _admit_and_step(
        self, frames: list[Frame], stored: dict[str, float], applied: Applied
    ) -> None:
        frames = self._within_sensor_limit(self.gate.admit(frames, self.sensors), applied)
        if not frames:
            return
        self._step(frames, applied)
        if self.sensor_idle_s:
            for frame in frames:
                self.last_seen.seen(frame.sensor, stored[frame.sensor])

    def _evict(self, sensors: list[str], applied: Applied) -> None:
        """Drop idle sensors: rows, records and their last device time go with them."""
        if not sensors:
            return
        last_t = last_sample_times(self.sensors, sensors)
        self._number(self.pipeline.evict(sensors, last_t), applied)
        forget_sensors(self.sensors, self.changed, sensors)
        applied.expired += sensors

    def _decode(self, message: StreamMessage, received: float) -> Frame:
        try:
            _, topic = self.settings.topic_of(message.subject)
        except ValueError as exc:
            raise ParseError("topic", str(exc)) from None
        return self.decoder.decode(topic, message.data, received)

    def _within_sensor_limit(self, frames: list[Frame], applied: Applied) -> list[Frame]:
        """Frames of known sensors, and of new ones while fewer than ``max_sensors`` are
        known (in stream order, so a replay refuses the same ones)."""
        kept, refused = within_sensor_limit(frames, self.sensors, self.max_sensors)
        applied.refused += refused
        if refused:
            _limited(
                logging.ERROR,
                "max_sensors",
                "partition %d holds daemon.max_sensors "
                "(%d) sensors: samples of new sensors are refused",
                self.partition,
                self.max_sensors,
            )
        return kept

    def _step(self, frames: list[Frame], applied: Applied) -> None:
        sensors, samples, times = batch_arrays(frames)
        events = self.pipeline.update(sensors, samples, times)
        applied.samples += len(sensors)
        record_batch(
            self.sensors, self.changed, frames, self.pipeline.last_scores, self.pipeline.last_status
        )
        self._number(events, applied)

    def _number(self, events: Sequence[Any], applied: Applied) -> None:
        """Number the events' alert records into ``applied`` and mark their sensors."""
        decided = time.time()
        for event in events:
            self.alert_seq += 1
            applied.records.append(
                alert_record(
                    event,
                    seq=self.alert_seq,
                    daemon=self.daemon_name,
                    model_id=self.loaded.model_id,
                    model_sha=self.loaded.sha256,
                    published=decided,
                )
            )
            record_alert(self.sensors, event)
