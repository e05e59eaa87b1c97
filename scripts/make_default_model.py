"""Build the shipped default model and demo recording from the UCI fan data (CC BY 4.0).

    PYTHONPATH=. python scripts/make_default_model.py

1. Trains the library's recipe (:func:`streamlstm.train.train`, v2 defaults: delta
   target, 3-fold calibration, one torch thread, seed 0) on windowed features of the
   fan's configuration-1 samples 0-1599 of every speed block, each block its own
   recording (features and split of ``benchmarks/quality/vibration.py``'s validation
   part: samples 1600-2999 stay unseen).
2. Calibrates it for one operating point, the fan at 60 % speed, on samples 1600-1999
   of that block (never trained on): a level that is normal at one speed is anomalous at
   another, so a site calibrates on its own machine and speed (``streamlstm calibrate``).
3. Writes ``weights/accel-default.npz`` (and the same file as
   ``streamlstm/data/accel-default.npz``) and ``streamlstm/data/demo.npz``: 20 s of
   configuration 1 at 60 % (samples 2000-2999, never used for training or calibration)
   followed by 30 s of configuration 3 ("opposite" blade weights) at 60 %.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality.cases import SHARED_DATA  # noqa: E402
from quality.vibration import FAN_FEATURES  # noqa: E402

import streamlstm as sl  # noqa: E402
from streamlstm.detect import calibrate  # noqa: E402
from streamlstm.train import train  # noqa: E402

SPEED = 60
TRAIN_SAMPLES, CALIBRATION_SAMPLES = 1600, 2000
NORMAL_SECONDS, ANOMALOUS_SECONDS = 20, 30
#: Alert parameters of the demo operating point (the detector's defaults otherwise).
#: The level term and RMS pooling are set here, not inherited: at one operating point the
#: vibration level itself is the anomaly (the recipe's own defaults, chosen on the
#: five-dataset suite, leave the level term out).
ALERTS = {
    "alpha": 0.3,
    "debounce_steps": 3,
    "hysteresis": 0.3,
    "quiet_s": 2.0,
    "warmup_steps": 5,
    "false_alarms_per_day": 1.0,
    "margin": 1.5,
    "level": True,
    "pool": "rms",
}
SPLIT = "fan-config1-blocks-0:1600-train/1600:2000-calibration(60%)-v2"


def main() -> int:
    data = np.load(SHARED_DATA / "uci-fan-accelerometer" / "fan_accelerometer.npz")
    acc, config, speed = data["acc"].astype(np.float64), data["config_id"], data["speed_pct"]
    fs = float(data["fs_hz"])
    speeds = [int(p) for p in np.unique(speed)]
    blocks = {p: acc[(config == 1) & (speed == p)] for p in speeds}
    result = train(
        [blocks[p][:TRAIN_SAMPLES] for p in speeds],
        features=FAN_FEATURES,
        channels=("x", "y", "z"),
        sample_rate=fs,
        name="accel-default",
        seed=0,
        calibration=ALERTS,
    )
    model = calibrate(result.model, [blocks[SPEED][TRAIN_SAMPLES:CALIBRATION_SAMPLES]], **ALERTS)
    metadata = dict(model.metadata)
    metadata.update(
        {
            "split": SPLIT,
            "operating_point": f"fan speed {SPEED} %",
            "data": "UCI Accelerometer (id 846), doi:10.24432/C5Q61V, CC BY 4.0; "
            "G. Scalabrini Sampaio, A. R. de Aguiar Vallim Filho, L. Santos da Silva, "
            "L. A. da Silva (2019)",
            "card": "weights/README.md",
        }
    )
    model = model.replace(metadata=metadata)
    path = sl.formats.save(model, ROOT / "weights" / "accel-default.npz")
    # The package carries the same bytes, so an installed wheel has its default model too.
    shutil.copyfile(path, ROOT / "streamlstm" / "data" / "accel-default.npz")
    cal = model.calibration
    print(
        f"wrote {path} (and its copy in streamlstm/data): threshold {cal['threshold']:.4g} "
        f"({cal['tail']} tail of {cal['scores']} scores), epochs {result.epochs} "
        f"(folds {result.best_epochs}), {result.seconds:.1f} s"
    )

    normal = acc[(config == 1) & (speed == SPEED)][2000 : 2000 + int(NORMAL_SECONDS * fs)]
    anomalous = acc[(config == 3) & (speed == SPEED)][: int(ANOMALOUS_SECONDS * fs)]
    samples = np.concatenate([normal, anomalous]).astype(np.float32)
    label = np.r_[np.zeros(len(normal), np.int8), np.ones(len(anomalous), np.int8)]
    demo = ROOT / "streamlstm" / "data" / "demo.npz"
    np.savez_compressed(
        demo,
        samples=samples,
        t=np.arange(len(samples)) / fs,
        label=label,
        fs_hz=np.float64(fs),
        channels=np.array(["x", "y", "z"]),
    )
    print(f"wrote {demo}: {len(samples)} samples, {demo.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
