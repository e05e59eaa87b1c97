"""Snapshot files written before the typed snapshot states restore bit for bit, and the
typed states write the same layout; a newer or foreign version is refused with a clear
message and nothing of it is applied.

``data/snapshots-6bcaf35/`` holds files written by streamlstm 6bcaf35 (the last commit
whose ``export_state`` returned a dict), format ``streamlstm.snapshot/2``: a daemon's
snapshot of a :class:`~streamlstm.detect.Detector` on the shipped default model (three
sensors, alerts open, a forgotten sensor's row reused), one of a
:class:`~streamlstm.detect.WindowDetector` on ``window_models.channel_classifier()``, and
a fleet partition's state. Format ``/1`` files (string lists inline in the JSON tree) are
made from them here. The files are read back by :func:`raw_tree`, plain NumPy and JSON,
independently of the code under test.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from window_models import channel_classifier

import streamlstm as sl
from streamlstm.daemon import snapshot
from streamlstm.daemon.metrics import Metrics
from streamlstm.daemon.pipeline import load_model
from streamlstm.daemon.sensortable import SensorColumns
from streamlstm.daemon.snapshot_state import DaemonSnapshot
from streamlstm.daemon.snapshotter import restore_snapshot
from streamlstm.detect import WindowDetector
from streamlstm.detect.state import detector_state_from_tree
from streamlstm.fleet.snapshots import PartitionSnapshot

DATA = Path(__file__).parent / "data" / "snapshots-6bcaf35"
RESTORE_FAILURES = "streamlstm_snapshot_restore_failures_total"
MISMATCH = (("reason", "mismatch"),)


def raw_tree(path: Path) -> tuple[str, Any]:
    """A snapshot file's format and state tree, read with NumPy and JSON alone."""
    with np.load(path, allow_pickle=False) as npz:
        members = {name: npz[name] for name in npz.files}
    tree = json.loads(members.pop("__tree__").tobytes())

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return members[value["__array__"]]
            if set(value) == {"__strings__"}:
                lengths, blob = (members[name] for name in value["__strings__"])
                data, ends = blob.tobytes(), np.cumsum(lengths).tolist()
                return [
                    data[end - n : end].decode("utf-8", "surrogatepass")
                    for n, end in zip(lengths.tolist(), ends, strict=True)
                ]
            return {key: resolve(v) for key, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    return tree["format"], resolve(tree["state"])


def write_format_1(state: Any, path: Path) -> None:
    """``state`` in format ``/1``: arrays as members, string lists inline in the JSON."""
    arrays: dict[str, np.ndarray] = {}

    def split(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            arrays[f"a{len(arrays)}"] = value
            return {"__array__": f"a{len(arrays) - 1}"}
        if isinstance(value, dict):
            return {key: split(v) for key, v in value.items()}
        if isinstance(value, list):
            return [split(v) for v in value]
        return value

    tree = json.dumps({"format": "streamlstm.snapshot/1", "state": split(state)})
    np.savez(path, __tree__=np.frombuffer(tree.encode(), np.uint8), **arrays)


def assert_same_tree(got: Any, want: Any, where: str = "state") -> None:
    """Equal trees, arrays bit for bit (same dtype, shape and bytes: NaN payloads, -0.0)."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            assert_same_tree(got[key], want[key], f"{where}.{key}")
    else:
        assert type(got) is type(want) and got == want, where


def fixture_file(name: str, version: int, tmp_path: Path) -> Path:
    """The fixture ``name`` in format ``/<version>`` (``/1`` made from the ``/2`` file)."""
    if version == 2:
        return DATA / name
    path = tmp_path / name
    write_format_1(raw_tree(DATA / name)[1], path)
    assert raw_tree(path)[0] == "streamlstm.snapshot/1"
    return path


def detector_for(tree: dict[str, Any]) -> Any:
    """A fresh detector of the fixture's model."""
    if tree["detector"].get("kind") == "window":
        return WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    return sl.Detector(load_model(None).model)


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("name", ["daemon-v2.npz", "window-v2.npz"])
def test_a_daemon_snapshot_of_the_previous_release_restores_bit_for_bit(tmp_path, name, version):
    path = fixture_file(name, version, tmp_path)
    _, want = raw_tree(path)
    detector = detector_for(want)
    metrics = Metrics()
    records = restore_snapshot(str(path), detector, metrics)
    assert metrics.value(RESTORE_FAILURES, MISMATCH) == 0 and path.exists()
    state = detector.export_state()
    assert_same_tree(state.to_tree(), want["detector"], "detector")
    columns = SensorColumns.from_records(list(records.values()))
    assert_same_tree(columns.to_tree(), want["sensors"], "sensors")
    # Written again by this release: the same tree, so older releases read it too.
    again = DaemonSnapshot(want["model_sha256"], state, columns)
    snapshot.save(tmp_path / "again.npz", again.to_tree())
    written_format, written = raw_tree(tmp_path / "again.npz")
    assert written_format == snapshot.FORMAT == "streamlstm.snapshot/2"
    assert_same_tree(written, want)


def test_a_snapshot_of_other_weights_that_fit_is_restored_and_the_change_is_logged(
    tmp_path, caplog
):
    path = DATA / "daemon-v2.npz"
    _, tree = raw_tree(path)
    written_with = tree["model_sha256"]
    for running, said in ((written_with, False), ("f" * 64, True)):
        detector, metrics = detector_for(tree), Metrics()
        caplog.clear()
        with caplog.at_level(logging.WARNING, "streamlstm.daemon"):
            records = restore_snapshot(str(path), detector, metrics, running)
        assert records and metrics.value(RESTORE_FAILURES, MISMATCH) == 0
        assert_same_tree(detector.export_state().to_tree(), tree["detector"], "detector")
        assert ("written with other weights" in caplog.text) == said, caplog.text
        if said:
            assert f"sha256 {written_with[:12]}, now ffffffffffff" in caplog.text


@pytest.mark.parametrize("version", [2, 1])
def test_a_fleet_partition_snapshot_of_the_previous_release_restores_bit_for_bit(tmp_path, version):
    path = fixture_file("partition-v2.npz", version, tmp_path)
    _, want = raw_tree(path)
    state = PartitionSnapshot.from_tree(snapshot.decode(path.read_bytes()))
    detector = detector_for(want)
    detector.import_state(state.detector)
    assert_same_tree(detector.export_state().to_tree(), want["detector"], "detector")
    assert state.last_seen == list(
        zip(want["last_seen"]["names"], want["last_seen"]["t"].tolist(), strict=True)
    )
    assert state.alerts == want["alerts"] and state.alerts
    (tmp_path / "encoded.npz").write_bytes(snapshot.encode(state.to_tree()))
    written_format, written = raw_tree(tmp_path / "encoded.npz")
    assert written_format == snapshot.FORMAT
    assert_same_tree(written, want)


def test_a_snapshot_of_a_newer_format_is_refused_with_a_clear_message(tmp_path):
    newer = b'{"format": "streamlstm.snapshot/9", "state": {}}'
    np.savez(tmp_path / "v9.npz", __tree__=np.frombuffer(newer, np.uint8))
    with pytest.raises(
        snapshot.SnapshotError,
        match=r"format 'streamlstm\.snapshot/9' is not one this release reads "
        r"\(streamlstm\.snapshot/1, streamlstm\.snapshot/2\): written by a newer streamlstm\?",
    ):
        snapshot.load(tmp_path / "v9.npz")


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("daemon-v2.npz", {"version": 4}, r"detector snapshot: unsupported version 4 \(this"),
        ("window-v2.npz", {"version": 2}, r"window detector snapshot: unsupported kind 'window'"),
        ("window-v2.npz", {"kind": None}, "unsupported version 1"),  # a streaming detector's
        ("daemon-v2.npz", {"rings": np.zeros((3, 50, 4))}, r"rings has shape \(3, 50, 4\)"),
        ("daemon-v2.npz", {"istate": np.zeros((3, 8))}, "istate must be an array of integers"),
        ("daemon-v2.npz", {"sensors": ["a", "a", "b"]}, "a sensor id appears twice"),
        ("daemon-v2.npz", {"sensors": ["a", ["b"], "c"]}, "neither a string nor an integer"),
        ("daemon-v2.npz", {"model_id": 7}, "model_id must be of type str, got 7"),
    ],
)
def test_a_foreign_or_malformed_detector_state_is_refused_and_nothing_is_applied(
    tmp_path, caplog, name, change, message
):
    _, tree = raw_tree(DATA / name)
    detector_tree = {key: value for key, value in tree["detector"].items() if key not in change}
    detector_tree.update({key: value for key, value in change.items() if value is not None})
    path = tmp_path / "state.npz"
    snapshot.save(path, {**tree, "detector": detector_tree})
    detector = detector_for(tree)  # holding the valid state, under other sensor names
    kept = [f"kept-{i}" for i in range(len(tree["detector"]["sensors"]))]
    detector.import_state(detector_state_from_tree({**tree["detector"], "sensors": kept}))
    before = detector.export_state()
    metrics = Metrics()
    with caplog.at_level(logging.ERROR, "streamlstm.daemon"):
        assert restore_snapshot(str(path), detector, metrics) == {}
    assert metrics.value(RESTORE_FAILURES, MISMATCH) == 1 and not path.exists()  # set aside
    assert len(list(tmp_path.glob("state.npz.bad-*"))) == 1
    assert re.search(message, caplog.text), caplog.text
    assert_same_tree(detector.export_state().to_tree(), before.to_tree())  # all or nothing
