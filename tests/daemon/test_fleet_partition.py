"""Issue 14: one owned partition's compute, in process: bad messages are counted and never
stop a batch, sequences are applied at most once per epoch, the sensor cap holds, and a
partition restored from its export continues bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from daemon_helpers import make_model, recording

from streamlstm.daemon.config import validate
from streamlstm.daemon.intake import TimestampGate, time_policy
from streamlstm.daemon.pipeline import load_model, make_detector
from streamlstm.fleet.config import FleetSettings
from streamlstm.fleet.partitions import OwnedPartition, StreamMessage
from streamlstm.sources.mqtt import MQTTSource

RATE = 100.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


def partition(
    model_path, *, seq=0, alert_seq=0, max_sensors=100, sensor_idle_s=0.0
) -> OwnedPartition:
    config = validate(
        {
            "model": {"path": str(model_path)},
            "sources": [{"type": "mqtt", "topic": "sensors/{sensor}/accel"}],
            "fleet": {"partitions": 4},
        }
    )
    loaded = load_model(config.model.path)
    detector = make_detector(loaded.model, config.detector)
    decoder = MQTTSource.from_config(config.sources[0], 3, config.mqtt, None)
    return OwnedPartition(
        1,
        1,
        FleetSettings.from_config(config),
        loaded,
        detector,
        decoder,
        TimestampGate(time_policy(config.daemon)),
        seq=seq,
        alert_seq=alert_seq,
        replay_until=0,
        max_sensors=max_sensors,
        sensor_idle_s=sensor_idle_s,
    )


def message(
    seq: int, sensor: str, t0: float, samples: np.ndarray, stored: float = 0.0
) -> StreamMessage:
    """A stream message with samples from device time ``t0``, stored at ``stored``."""
    body = {"t": t0, "rate": RATE, "samples": [[float(v) for v in row] for row in samples]}
    return StreamMessage(
        f"$MQTT.msgs.part.1.sensors.{sensor}.accel", json.dumps(body).encode(), seq, 0, stored
    )


def test_bad_messages_are_counted_and_the_batch_goes_on(model_path):
    owned = partition(model_path)
    x = recording(1.0, RATE, [], seed=1)
    batch = [
        message(1, "a", 0.0, x[:10]),
        StreamMessage("$MQTT.msgs.part.1.sensors.a.accel", b"{not json", 2, 0),
        StreamMessage("$MQTT.msgs.part.1.elsewhere", b"{}", 3, 0),
        StreamMessage("unrelated.subject", b"{}", 4, 0),
        message(5, "a", 0.1, np.full((10, 3), np.nan, np.float32)),
        message(6, "b", 0.0, x[:10]),
    ]
    applied = owned.apply(batch)
    assert (applied.first_seq, applied.last_seq, applied.messages) == (1, 6, 6)
    assert owned.applied_seq == 6
    errors = owned.decoder.stats.snapshot().parse_errors
    assert errors["json"] == 1 and errors["topic"] == 2
    assert owned.sensors["a"].samples == 20 and owned.sensors["a"].rejected == 10
    assert owned.sensors["b"].samples == 10
    # A redelivery within the epoch is not applied again.
    again = owned.apply(batch[-1:])
    assert (again.messages, again.skipped, again.samples) == (0, 1, 0)
    assert owned.sensors["b"].samples == 10


def test_new_sensors_beyond_the_cap_are_refused_in_stream_order(model_path):
    owned = partition(model_path, max_sensors=2)
    x = recording(0.1, RATE, [], seed=2)
    applied = owned.apply([message(i + 1, f"s{i}", 0.0, x) for i in range(4)])
    assert sorted(owned.sensors) == ["s0", "s1"]
    assert applied.refused == 2 * len(x)
    assert owned.apply([message(5, "s1", 1.0, x)]).refused == 0


def test_a_partition_restored_from_its_export_continues_bit_for_bit(model_path):
    x = recording(4.0, RATE, [(2.0, 2.5)], seed=3)
    messages = [
        message(i + 1, s, k * 0.1, x[k * 10 : (k + 1) * 10])
        for i, (k, s) in enumerate((k, s) for k in range(40) for s in ("a", "b"))
    ]
    whole = partition(model_path)
    records = []
    for start in range(0, len(messages), 7):
        records += whole.apply(messages[start : start + 7]).records
    first = partition(model_path)
    split = 33
    records_split = first.apply(messages[:split]).records
    second = partition(model_path, seq=first.applied_seq, alert_seq=first.alert_seq)
    second.restore(first.export())
    records_split += second.apply(messages[split:]).records
    want, got = whole.export().detector, second.export().detector
    for name in ("states", "istate", "fstate", "preds", "rings", "rejected"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    strip = [{k: v for k, v in r.items() if k != "published"} for r in records]
    assert strip and strip == [
        {k: v for k, v in r.items() if k != "published"} for r in records_split
    ]
    assert {r["daemon"] for r in records} == {"streamlstm/p1"}
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


def idle_stream(faults=((2.0, 2.5),)) -> list[StreamMessage]:
    """Sensors a and b every 0.1 s (stream clock = device clock); b is silent from 1.0 s to
    3.5 s."""
    x = recording(4.0, RATE, list(faults), seed=4)
    out = []
    for k in range(40):
        for sensor in ("a", "b"):
            if sensor == "b" and 10 < k < 35:
                continue
            t = k * 0.1
            out.append(message(len(out) + 1, sensor, t, x[k * 10 : (k + 1) * 10], stored=t))
    return out


def test_idle_sensors_are_evicted_on_the_stream_clock_alike_in_any_batching_and_handoff(
    model_path,
):
    messages = idle_stream()
    kept = partition(model_path)  # sensor_idle_s = 0: never evicted
    kept.apply(messages)
    assert kept.sensors["b"].samples == 16 * 10
    whole = partition(model_path, sensor_idle_s=2.0)
    expired = [
        s for i in range(0, len(messages), 7) for s in whole.apply(messages[i : i + 7]).expired
    ]
    # b was last stepped at 1.0 s: gone before the first message stored at 3.0 s, and back
    # at 3.5 s as a new sensor.
    assert expired == ["b"] and whole.sensors["b"].samples == 5 * 10
    assert whole.sensors["a"].samples == 40 * 10
    want = whole.export()
    for cuts in ([len(messages)], [3, 30, 41, 42, 56], [25, 45, 56]):
        # Other fetch batches, and a handoff (export -> restore) after each batch.
        owned, start = partition(model_path, sensor_idle_s=2.0), 0
        for cut in cuts:
            owned.apply(messages[start:cut])
            state, start = owned.export(), cut
            owned = partition(
                model_path, seq=owned.applied_seq, alert_seq=owned.alert_seq, sensor_idle_s=2.0
            )
            owned.restore(state)
        got = owned.export()
        for name in ("states", "istate", "fstate", "preds", "rings", "rejected"):
            np.testing.assert_array_equal(
                getattr(got.detector, name), getattr(want.detector, name), err_msg=f"{cuts} {name}"
            )
        assert got.detector.sensors == want.detector.sensors
        assert [n for n, _ in got.last_seen] == [n for n, _ in want.last_seen] == ["a", "b"]
        np.testing.assert_array_equal([t for _, t in got.last_seen], [t for _, t in want.last_seen])
        assert {n: r.samples for n, r in owned.sensors.items()} == {"a": 400, "b": 50}


def test_an_idle_sensor_evicted_in_alert_ends_it_alike_in_any_batching(model_path):
    messages = idle_stream(faults=[(0.7, 1.1)])  # b goes silent in the middle of a burst
    runs = []
    for size in (7, len(messages), 3):
        owned = partition(model_path, sensor_idle_s=2.0)
        records = [
            r
            for i in range(0, len(messages), size)
            for r in owned.apply(messages[i : i + size]).records
        ]
        runs.append([{k: v for k, v in r.items() if k != "published"} for r in records])
    assert runs[0] == runs[1] == runs[2]
    evicted = [r for r in runs[0] if "reason" in r]
    assert [(r["sensor"], r["kind"], r["reason"]) for r in evicted] == [("b", "end", "evicted")]
    assert evicted[0]["t"] == pytest.approx(1.09)  # b's last sample
    assert [r["seq"] for r in runs[0]] == list(range(1, len(runs[0]) + 1))
