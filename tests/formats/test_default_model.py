"""The shipped default model and demo recording."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import streamlstm as sl
from streamlstm.data import DEFAULT_MODEL_PATH, load_demo
from streamlstm.detect.calibration_record import Calibration

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "accel-default.npz"


def test_default_model_loads_with_its_calibration_and_features():
    model = sl.formats.load(WEIGHTS)
    assert model.name == "accel-default"
    assert model.metadata["features"]["window"] == 50
    assert model.metadata["sample_channels"] == ["x", "y", "z"]
    assert model.calibration["score"] == "residual" and model.calibration["threshold"] > 0
    assert "CC BY 4.0" in model.metadata["data"]
    # The shipped calibration reads into a record and back unchanged, but for its version:
    # it predates schema 3, so its level term is stored under version 2, and a record
    # writes the version the schema asks for (3: an older build would misread it).
    assert model.calibration["version"] == 2 and "level_center" in model.calibration
    assert Calibration.from_model(model).to_dict() == {**model.calibration, "version": 3}


def test_package_copy_of_the_default_model_is_the_same_file():
    assert DEFAULT_MODEL_PATH.read_bytes() == WEIGHTS.read_bytes()


def test_demo_alerts_in_its_anomalous_part_and_never_in_its_normal_part():
    demo = load_demo()
    assert demo.samples.shape == (demo.t.shape[0], 3) and demo.channels == ("x", "y", "z")
    assert demo.label[0] == 0 and demo.label[-1] == 1
    det = sl.Detector(sl.formats.load(WEIGHTS))
    # Streamed in 1 s micro-batches, as the daemon's demo source does.
    events = []
    for start in range(0, len(demo.t), 50):
        part = slice(start, start + 50)
        events += det.update(["fan"] * len(demo.t[part]), demo.samples[part], demo.t[part])
    switch = demo.t[np.argmax(demo.label)]
    starts = [e for e in events if e.kind == "start"]
    assert starts, "the demo raised no alert"
    assert all(e.t >= switch for e in starts)
    assert starts[0].t - switch < 5.0
