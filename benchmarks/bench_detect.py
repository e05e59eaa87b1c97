"""Throughput of the fused detector vs the same work done unfused (bank step + NumPy + Python).

    PYTHONPATH=. python benchmarks/bench_detect.py [--json out.json] [--repeat 20]

Both sides do the same thing per sample: one model step, the residual against the
previous prediction, a diagonal standardised score, EWMA smoothing and the debounced
alert state machine. The unfused side is what one would write without the fused kernel:
``Bank.step_rows`` for the model, NumPy for the scores, a Python loop for the per-sensor
state machine. Micro-batches hold one sample per sensor. Prints a table with the ratio
and writes JSON. Timings on a shared machine vary; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import streamlstm as sl
from streamlstm.detect import calibrate

ROOT = Path(__file__).resolve().parents[1]


def unfused_update(bank, rows, state, cal, samples):
    """Bank step, then NumPy scoring, then a Python state machine per sample."""
    prev = state["pred"][rows]
    preds = bank.step_rows(rows, samples)
    z = (samples - prev - cal["center"]) * cal["scale"]
    raw = np.mean(z * z, axis=1)
    score = state["score"][rows] = cal["alpha"] * raw + (1 - cal["alpha"]) * state["score"][rows]
    state["pred"][rows] = preds
    events = 0
    for i, row in enumerate(rows):  # the per-sample Python the fused kernel avoids
        if score[i] > cal["threshold"]:
            state["above"][row] += 1
            if state["above"][row] == cal["debounce"]:
                events += 1
        else:
            state["above"][row] = 0
    return events


def measure(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "detect.json")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    model = calibrate(
        sl.random_model(3, [32], output_size=3, seed=0), rng.normal(size=(600, 3)), warmup_steps=5
    )
    cal = model.calibration
    simple = {
        "center": np.asarray(cal["center"], np.float32),
        "scale": np.diag(np.asarray(cal["whiten"])).astype(np.float32),
        "alpha": cal["alpha"],
        "threshold": cal["threshold"],
        "debounce": cal["debounce"],
    }
    rows_out = []
    for sensors in (1, 100, 1000, 10000):
        ids = np.arange(sensors)
        samples = rng.normal(size=(sensors, 3)).astype(np.float32)
        times = np.zeros(sensors)
        det = sl.Detector(model, capacity=sensors, threads=1)
        bank = model.bank(capacity=sensors, threads=1)
        rows = bank.rows(ids)
        state = {
            "pred": np.zeros((sensors, 3), np.float32),
            "score": np.zeros(sensors),
            "above": np.zeros(sensors, np.int64),
        }
        fused = measure(lambda d=det, i=ids, s=samples, t=times: d.update(i, s, t), args.repeat)
        plain = measure(
            lambda b=bank, r=rows, st=state, s=samples: unfused_update(b, r, st, simple, s),
            args.repeat,
        )
        rows_out.append(
            {
                "sensors": sensors,
                "fused_us_per_sample": fused / sensors * 1e6,
                "unfused_us_per_sample": plain / sensors * 1e6,
                "speedup": plain / fused,
            }
        )
    print(f"{'sensors':>8} {'fused us/sample':>16} {'unfused us/sample':>18} {'speedup':>8}")
    for r in rows_out:
        print(
            f"{r['sensors']:>8} {r['fused_us_per_sample']:>16.3f} "
            f"{r['unfused_us_per_sample']:>18.3f} {r['speedup']:>7.1f}x"
        )
    args.json.write_text(json.dumps({"model": model.describe(), "results": rows_out}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
