"""Daemon memory under a flood of maximum-size float32 payloads (issue 12, item 6).

Starts a private mosquitto and ``streamlstm run`` (a subprocess, from ``--repo``, so an
older checkout can be measured the same way), publishes one payload to compile the
kernels, reads the resident size (baseline), publishes ``--payloads`` payloads of
``65536 x 3`` float32 (786 kB each, the default ``max_samples``) as fast as mosquitto
takes them, waits until every payload has been received and the queue has drained, and
reports the peak (``VmHWM``) and the resident size after the drain.

    PYTHONPATH=. python benchmarks/flood_rss.py                       # this checkout
    PYTHONPATH=. python benchmarks/flood_rss.py --repo /tmp/old       # an older checkout
    PYTHONPATH=. python benchmarks/flood_rss.py --queue-bytes 0       # no byte bound

``--queue-bytes 0`` omits the key (an older checkout does not know it). Memory figures
only; no timing is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, start_broker, wait_for

from streamlstm.daemon.metrics import scrape

REPO = Path(__file__).resolve().parents[1]


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def site(folder: Path, broker_port: int, metrics_port: int, queue_bytes: int) -> Path:
    bound = f"queue_bytes = {queue_bytes}\n" if queue_bytes else ""
    path = folder / "site.toml"
    path.write_text(
        f'[daemon]\nmetrics_port = {metrics_port}\nbackpressure = "drop-oldest"\n{bound}'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "flood"\n'
        '[[sources]]\ntype = "mqtt"\nname = "flood"\ntopic = "raw/{sensor}/accel"\n'
        'payload = "float32"\nrate = 1000.0\nqos = 1\n'
        '[[sinks]]\ntype = "jsonl"\npath = "alerts.jsonl"\n'
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--payloads", type=int, default=2000)
    parser.add_argument("--queue-bytes", type=int, default=64 * 2**20)
    args = parser.parse_args()
    payload = np.random.default_rng(0).normal(size=(65536, 3)).astype("<f4").tobytes()
    received = 'streamlstm_source_samples_total{source="flood"}'
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker, broker_port = start_broker(folder)
        metrics_port = free_port()
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlstm.cli",
                "run",
                "--config",
                str(site(folder, broker_port, metrics_port, args.queue_bytes)),
            ],
            env={**os.environ, "PYTHONPATH": str(args.repo)},
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="flood-pub")
        pub.connect("127.0.0.1", broker_port)
        pub.loop_start()
        try:
            wait_for(
                lambda: _scrape(metrics_port).get('streamlstm_connected{component="source:flood"}'),
                120,
                "the daemon",
            )
            pub.publish("raw/warm/accel", payload, qos=1)
            wait_for(
                lambda: _scrape(metrics_port).get("streamlstm_samples_total") == 65536,
                300,
                "warm-up",
            )
            baseline = status_mb(daemon.pid, "VmRSS")
            for i in range(args.payloads):
                pub.publish(f"raw/s{i % 16}/accel", payload, qos=1)
            total = 65536 * (args.payloads + 1)
            wait_for(lambda: _scrape(metrics_port).get(received) == total, 600, "the flood")
            wait_for(
                lambda: _scrape(metrics_port).get("streamlstm_queue_frames") == 0, 600, "drain"
            )
            time.sleep(2.0)
            figures = {
                "repo": str(args.repo),
                "payloads": args.payloads,
                "payload_bytes": len(payload),
                "queue_bytes": args.queue_bytes or None,
                "rss_baseline_mb": round(baseline, 1),
                "rss_peak_mb": round(status_mb(daemon.pid, "VmHWM"), 1),
                "rss_after_drain_mb": round(status_mb(daemon.pid, "VmRSS"), 1),
                "dropped_frames": _scrape(metrics_port).get("streamlstm_dropped_frames_total"),
            }
        finally:
            pub.disconnect()
            pub.loop_stop()
            daemon.terminate()
            daemon.wait(60)
            broker.terminate()
            broker.wait(10)
    print(json.dumps(figures, indent=2))
    return 0


def _scrape(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
