"""Snapshots of a big fleet: compute-loop stall, write time, size, and SIGTERM time (not a test).

For each fleet size N (default 100k and 1M sensors, the shipped default model):

1. in this process, a :class:`~streamlstm.daemon.engine.Daemon` is given N sensors through
   its real ``process`` path (one frame per sensor), then snapshots are taken as the
   compute loop takes them: a slice of the state copied per loop turn (the *stall* per
   turn), a 1000-frame micro-batch of known sensors stepped between turns, then the writer
   thread picks the rows out, encodes and writes (the *write*, off the loop). The
   micro-batches' times while the writer runs, against the same batches with it idle,
   show what the writer costs the loop through the GIL;
2. with ``--sigterm``, ``streamlstm run`` (a subprocess, as deployed) starts from that
   N-sensor snapshot; its RSS once running, then the time from SIGTERM to exit (drain,
   final snapshot, clean stop; the unit's ``TimeoutStopSec`` is 30 s) and the size of the
   snapshot it leaves.

Writes ``benchmarks/results/bench_snapshot.json``.

    PYTHONPATH=. python benchmarks/bench_snapshot.py                          # ~5 minutes
    PYTHONPATH=. python benchmarks/bench_snapshot.py --sensors 100000 --sigterm
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_facts, rss_mb

from streamlstm.daemon.config import validate
from streamlstm.daemon.engine import Daemon
from streamlstm.sources import Frame

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CHUNK = 20_000  # frames per populating micro-batch


def make_daemon(folder: Path, sensors: int) -> Daemon:
    config = validate(
        {
            "daemon": {
                "snapshot_path": "state.npz",
                "snapshot_interval_s": 3600.0,
                "max_sensors": sensors + 1,
                "sensor_idle_s": 0.0,
                "exit_when_sources_end": False,
            },
            "detector": {"capacity": sensors},
            "sources": [{"type": "demo"}],
            "sinks": [{"type": "jsonl", "path": "alerts.jsonl"}],
        },
        base=folder,
    )
    return Daemon(config)


def frames_for(names: list[str], width: int, rng: np.random.Generator) -> list[Frame]:
    samples = rng.normal(size=(len(names), 1, width)).astype(np.float32)
    now = time.time()
    return [Frame(name, np.array([now]), samples[i], now) for i, name in enumerate(names)]


def bench_in_process(folder: Path, sensors: int, repeats: int) -> dict:
    daemon = make_daemon(folder, sensors)
    width = daemon.sources[0].recording.samples.shape[1]
    rng = np.random.default_rng(0)
    names = [f"sensor-{i:07d}" for i in range(sensors)]
    started = time.perf_counter()
    for begin in range(0, sensors, CHUNK):
        daemon.process(frames_for(names[begin : begin + CHUNK], width, rng))
    populate = time.perf_counter() - started
    rss = rss_mb(os.getpid())
    probe = frames_for(names[:1000], width, rng)

    def step_times(count: int) -> list[float]:
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            daemon.process(probe)
            out.append(time.perf_counter() - t0)
        return out

    idle_steps = step_times(50)
    turns, copies, writes, busy_steps = [], [], [], []
    for _ in range(repeats):
        # As the compute loop does: a slice of the copy per turn, a micro-batch between.
        t0 = time.perf_counter()
        daemon.write_snapshot()
        turns.append(time.perf_counter() - t0)
        while True:
            busy_steps += step_times(1)
            t1 = time.perf_counter()
            if not daemon.snapshots.advance():
                break
            turns.append(time.perf_counter() - t1)
        copies.append(time.perf_counter() - t0)
        t2 = time.perf_counter()
        while not daemon.snapshots.flush(0.0):
            busy_steps += step_times(1)
        writes.append(time.perf_counter() - t2)
    size = (folder / "state.npz").stat().st_size
    daemon.request_stop()
    daemon.shutdown()
    return {
        "sensors": sensors,
        "populate_s": populate,
        "rss_mb_in_process": rss,
        "stall_per_turn_s_max_p50": [max(turns), float(np.median(turns))],
        "turns_per_snapshot": len(turns) / repeats,
        "copy_elapsed_s": copies,
        "write_s": writes,
        "snapshot_bytes": size,
        "batch_1000_frames_idle_ms_p50_max": [1000 * np.median(idle_steps), 1000 * max(idle_steps)],
        "batch_1000_frames_while_writing_ms_p50_max": (
            [1000 * np.median(busy_steps), 1000 * max(busy_steps)] if busy_steps else None
        ),
        "batches_while_writing": len(busy_steps),
    }


def bench_sigterm(folder: Path, sensors: int) -> dict:
    site = folder / "site.toml"
    site.write_text(f"""
[daemon]
snapshot_path = "state.npz"
snapshot_interval_s = 3600.0
max_sensors = {sensors + 1}
sensor_idle_s = 0.0
exit_when_sources_end = false
log_level = "info"
[detector]
capacity = {sensors}
[[sources]]
type = "demo"
speed = 1.0
[[sinks]]
type = "jsonl"
path = "alerts.jsonl"
""")
    log = open(folder / "daemon.log", "wb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlstm.cli", "run", "--config", str(site)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 900
        while "running:" not in (folder / "daemon.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "daemon.log").read_text())
            time.sleep(0.2)
        start_s = time.monotonic() - started
        time.sleep(2.0)
        rss = rss_mb(process.pid)
        t0 = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(900)
        stop_s = time.monotonic() - t0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = (folder / "daemon.log").read_text()
    assert code == 0, text
    return {
        "sensors": sensors,
        "start_to_running_s": start_s,
        "rss_mb_running": rss,
        "sigterm_to_exit_s": stop_s,
        "snapshot_bytes_after_stop": (folder / "state.npz").stat().st_size,
        "restored_log_line": next((x for x in text.splitlines() if "restored" in x), None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sensors", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sigterm", action="store_true", help="also time a daemon's SIGTERM")
    parser.add_argument("--folder", help="where snapshots go (default: a temporary folder)")
    args = parser.parse_args()
    results = {
        "machine": machine_facts("numba", "numpy"),
        "runs": [],
    }
    for sensors in args.sensors:
        with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
            folder = Path(tmp)
            run = bench_in_process(folder, sensors, args.repeats)
            print(json.dumps(run), flush=True)
            if args.sigterm:
                run["sigterm"] = bench_sigterm(folder, sensors)
                print(json.dumps(run["sigterm"]), flush=True)
            results["runs"].append(run)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_snapshot.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
