"""One owned partition: its detector, its sensors' records, and the sequences it covers.

Everything here is synchronous and runs on the worker's event loop between awaits, so a
batch is applied (stepped, alerts numbered, records updated) as one indivisible step and
:meth:`OwnedPartition.export` always sees a state consistent with :attr:`applied_seq`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._ratelimit import RateLimitedLog
from ..daemon.engine import sensor_columns, sensor_records
from ..daemon.intake import TimestampGate
from ..daemon.pipeline import LoadedModel, Pipeline
from ..sinks import SensorState, alert_record
from ..sources import Frame
from ..sources.mqtt import MQTTSource
from ..sources.parsers import ParseError
from .config import FleetSettings

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


@dataclass(frozen=True)
class StreamMessage:
    """What the worker needs of one JetStream message."""

    subject: str
    data: bytes
    seq: int  # stream sequence
    pending: int  # messages left in the consumer after this one (the lag)


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
        self.sensors: dict[str, SensorState] = {}
        self.changed: set[str] = set()
        self.lag = 0

    @property
    def daemon_name(self) -> str:
        """The alerts' ``daemon`` field: ``(daemon, seq)`` stays unique across handoffs."""
        return f"{self.settings.name}/p{self.partition}"

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot's state (raises if it does not fit the model: caller decides)."""
        records = sensor_records(state.get("sensors", {}))
        self.pipeline.import_state(state["detector"])
        self.sensors = records

    def export(self) -> dict[str, Any]:
        """The state to snapshot (covers :attr:`applied_seq`)."""
        return {
            "model_sha256": self.loaded.sha256,
            "detector": self.pipeline.export_state(),
            "sensors": sensor_columns(list(self.sensors.values())),
        }

    def apply(self, messages: Sequence[StreamMessage]) -> Applied:
        """Decode, gate and step one fetched batch (in stream order); number its alerts."""
        received = time.time()
        frames: list[Frame] = []
        skipped = replayed = 0
        first = last = 0
        for message in messages:
            if message.seq <= self.applied_seq:
                skipped += 1
                continue
            first = first or message.seq
            last = message.seq
            if message.seq <= self.replay_until:
                replayed += 1
            self.lag = message.pending
            try:
                frames.append(self._decode(message, received))
            except Exception as exc:  # one bad message is counted, never fatal
                self.decoder.stats.dropped(self.decoder.name, exc)
        applied = Applied(first, last, len(messages) - skipped, 0, replayed, skipped)
        if last:
            self.applied_seq = last
        frames = self._within_sensor_limit(self.gate.admit(frames, self.sensors), applied)
        if frames:
            self._step(frames, applied)
        return applied

    def _decode(self, message: StreamMessage, received: float) -> Frame:
        try:
            _, topic = self.settings.topic_of(message.subject)
        except ValueError as exc:
            raise ParseError("topic", str(exc)) from None
        return self.decoder.decode(topic, message.data, received)

    def _within_sensor_limit(self, frames: list[Frame], applied: Applied) -> list[Frame]:
        """Frames of known sensors, and of new ones while fewer than ``max_sensors`` are
        known (in stream order, so a replay refuses the same ones)."""
        if len(self.sensors) + len(frames) <= self.max_sensors:
            return frames
        kept: list[Frame] = []
        new: set[str] = set()
        for frame in frames:
            if frame.sensor in self.sensors or frame.sensor in new:
                kept.append(frame)
            elif len(self.sensors) + len(new) < self.max_sensors:
                new.add(frame.sensor)
                kept.append(frame)
            else:
                applied.refused += len(frame.t)
        if applied.refused:
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
        sensors: list[str] = []
        for frame in frames:
            sensors += [frame.sensor] * len(frame.t)
        samples = np.concatenate([f.samples for f in frames])
        times = np.concatenate([f.t for f in frames])
        events = self.pipeline.update(sensors, samples, times)
        scores, status = self.pipeline.last_scores, self.pipeline.last_status
        applied.samples = len(sensors)
        begin = 0
        for frame in frames:
            end = begin + len(frame.t)
            state = self.sensors.get(frame.sensor)
            if state is None:
                state = self.sensors[frame.sensor] = SensorState(frame.sensor)
            state.samples += end - begin
            bad = int(np.count_nonzero(status[begin:end]))
            state.rejected += bad
            if bad < end - begin:
                finite = scores[begin:end][np.isfinite(scores[begin:end])]
                if finite.size:
                    state.score = float(finite[-1])
                state.t = float(frame.t[-1])
            self.changed.add(frame.sensor)
            begin = end
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
            sensor = self.sensors.setdefault(str(event.sensor), SensorState(str(event.sensor)))
            sensor.alert = event.kind == "start"
