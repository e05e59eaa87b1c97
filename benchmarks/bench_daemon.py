"""End-to-end daemon benchmark through a real mosquitto on this machine (not a test).

K simulated sensors publish JSON batches (``{"t", "rate", "samples"}``, the documented
payload) from publisher processes to a private mosquitto; ``streamlstm run`` (a
subprocess, as deployed) subscribes, detects and publishes alerts. Measured from the
daemon's own Prometheus endpoint and /proc:

1. capacity: offered rates stepped up; for each, samples/s processed, loss (published
   minus processed after a drain), publish->decision latency p50/p99 of each batch's
   newest sample (``streamlstm_sample_age_seconds``), daemon CPU (cores);
2. soak at the target rate: the same figures plus RSS every few seconds (start, end,
   max, slope) for ``--soak`` seconds (``--soak 600`` for the 10-minute figure);
3. baseline: the naive design, a paho callback stepping ``torch.nn.LSTM`` one sample at
   a time, flooded with the same traffic; its throughput. With ``--hidden N`` both run
   the same raw-sample LSTM weights; with the shipped default model (a feature model
   stepping its LSTM once per 10 samples) the baseline steps a raw-sample LSTM of the
   same hidden size on every sample, as the naive design would.

The model is the shipped default (``weights/accel-default.npz``) unless ``--hidden``.

Prints a table with ratios and writes ``benchmarks/results/bench_daemon.json``.

    PYTHONPATH=. python benchmarks/bench_daemon.py                 # ~3 minutes
    PYTHONPATH=. python benchmarks/bench_daemon.py --soak 600      # the 10-minute soak
    PYTHONPATH=. python benchmarks/bench_daemon.py --hidden 32     # raw-sample LSTM, same weights
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_seconds, free_port, machine_facts, rss_mb, start_broker, wait_for

from streamlstm.daemon.metrics import scrape

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# -- infrastructure -------------------------------------------------------------------------
def histogram(metrics: dict[str, float], name: str) -> tuple[list[float], list[float]]:
    buckets = sorted(
        (
            (float(k.split('le="')[1].rstrip('"}')), v)
            for k, v in metrics.items()
            if k.startswith(f"{name}_bucket")
        ),
        key=lambda b: b[0],
    )
    return [b[0] for b in buckets], [b[1] for b in buckets]


def quantile(bounds: list[float], before: list[float], after: list[float], q: float) -> float:
    """Quantile of the observations between two scrapes (linear within a bucket)."""
    counts = np.subtract(after, before)
    total = counts[-1]
    if total <= 0:
        return float("nan")
    target = q * total
    index = int(np.searchsorted(counts, target))
    if index >= len(bounds) or not np.isfinite(bounds[index]):
        return float("inf")
    low_bound = bounds[index - 1] if index else 0.0
    low_count = counts[index - 1] if index else 0.0
    span = counts[index] - low_count
    return low_bound + (bounds[index] - low_bound) * ((target - low_count) / span if span else 1.0)


# -- the simulated sensors ----------------------------------------------------------------------
def publisher(
    port: int,
    sensors: list[str],
    rate_per_sensor: float,
    batch: int,
    seconds: float,
    counter,
    flood: bool,
) -> None:
    """Publish ``batch``-sample JSON messages per sensor at ``rate_per_sensor`` Hz (or flat out)."""
    import paho.mqtt.client as paho

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{sensors[0]}", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    rng = np.random.default_rng(abs(hash(sensors[0])) % 2**32)
    bodies = [json.dumps(rng.normal(size=(batch, 3)).round(4).tolist()) for _ in range(8)]
    period = batch / rate_per_sensor
    start, epoch = time.monotonic(), time.time()
    sent, tick = 0, 0
    infos = []
    while time.monotonic() - start < seconds:
        for index, sensor in enumerate(sensors):
            # Sensors are not synchronised: each sends at its own phase within the period.
            due = (tick + index / len(sensors)) * period
            delay = start + due - time.monotonic()
            if not flood and delay > 0:
                time.sleep(delay)
            # Device time as a real sensor keeps it: consecutive batches of a sensor follow
            # each other exactly (the daemon drops a batch that overlaps the last one as a
            # redelivery). Its newest sample is due now, so latency counts from the moment
            # it could have been sent, including any lateness of this publisher.
            t0 = epoch + due - (batch - 1) / rate_per_sensor
            payload = f'{{"t": {t0:.6f}, "rate": {rate_per_sensor}, "samples": {bodies[tick % 8]}}}'
            infos.append(client.publish(f"bench/{sensor}/accel", payload, qos=1))
            sent += batch
        tick += 1
        if len(infos) > 5000:
            infos[0].wait_for_publish(30)
            infos = [i for i in infos if not i.is_published()]
    for info in infos:
        info.wait_for_publish(60)
    with counter.get_lock():
        counter.value += sent
    client.disconnect()
    client.loop_stop()


def publish(
    port: int,
    sensors: list[str],
    total_rate: float,
    batch: int,
    seconds: float,
    processes: int,
    flood: bool = False,
) -> int:
    counter = mp.Value("q", 0)
    groups = [sensors[i::processes] for i in range(processes)]
    per_sensor = total_rate / len(sensors)
    workers = [
        mp.Process(target=publisher, args=(port, g, per_sensor, batch, seconds, counter, flood))
        for g in groups
        if g
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 120)
    return counter.value


# -- the system under test ---------------------------------------------------------------------
def bench_model(folder: Path, hidden: int | None) -> Path:
    """The shipped default model, or (``--hidden N``) a random 3->N LSTM calibrated on noise."""
    if hidden is None:
        from streamlstm.daemon.pipeline import default_model_path

        return default_model_path()
    import streamlstm as sl
    from streamlstm import formats
    from streamlstm.detect import calibrate

    rng = np.random.default_rng(0)
    model = calibrate(
        sl.random_model(3, [hidden], output_size=3, seed=1),
        rng.normal(size=(5000, 3)).astype(np.float32),
    )
    return formats.save(model, folder / "bench-model.npz")


def start_daemon(
    folder: Path, broker_port: int, model: Path, metrics_port: int, threads: int
) -> subprocess.Popen:
    site = folder / "bench.toml"
    site.write_text(f"""
[daemon]
metrics_port = {metrics_port}
backpressure = "block"
log_level = "warning"
[model]
path = "{model}"
[detector]
threads = {threads}
[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "bench-daemon"
[[sources]]
type = "mqtt"
topic = "bench/{{sensor}}/accel"
payload = "json"
qos = 1
[[sinks]]
type = "mqtt"
spool_dir = "spool"
""")
    with open(folder / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "streamlstm.cli", "run", "--config", str(site)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    wait_for(lambda: _subscribed(metrics_port) or daemon.poll() is not None, 120, "the daemon")
    if daemon.poll() is not None:
        raise RuntimeError((folder / "daemon.log").read_text())
    time.sleep(0.5)  # the SUBACK follows the CONNACK that set the gauge
    return daemon


def _subscribed(port: int) -> bool:
    try:
        return scrape(port).get('streamlstm_connected{component="source:mqtt0"}') == 1
    except OSError:
        return False


def run_step(
    args,
    broker_port: int,
    metrics_port: int,
    daemon: subprocess.Popen,
    rate: float,
    seconds: float,
    sample_rss: bool = False,
) -> dict:
    before = scrape(metrics_port)
    cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
    sensors = [f"s{i}" for i in range(args.sensors)]
    rss: list[tuple[float, float]] = []
    if sample_rss:
        import threading

        done = threading.Event()

        def sample() -> None:  # at the start, every rss_every s, and at the end
            rss.append((time.monotonic() - wall0, rss_mb(daemon.pid)))
            while not done.wait(args.rss_every):
                rss.append((time.monotonic() - wall0, rss_mb(daemon.pid)))
            rss.append((time.monotonic() - wall0, rss_mb(daemon.pid)))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    published = publish(broker_port, sensors, rate, args.batch, seconds, args.publishers)
    try:  # a daemon slower than the offered rate works through the broker's backlog
        wait_for(
            lambda: (
                scrape(metrics_port)["streamlstm_samples_total"]
                - before["streamlstm_samples_total"]
                >= published
            ),
            max(60.0, seconds),
            "the daemon to drain",
        )
    except TimeoutError:
        print("  (backlog not drained in time: counted as lost)", flush=True)
    wall = time.monotonic() - wall0
    if sample_rss:
        done.set()
        thread.join(5)
    after = scrape(metrics_port)
    processed = after["streamlstm_samples_total"] - before["streamlstm_samples_total"]
    bounds, c0 = histogram(before, "streamlstm_sample_age_seconds")
    _, c1 = histogram(after, "streamlstm_sample_age_seconds")
    _, d0 = histogram(before, "streamlstm_decision_latency_seconds")
    _, d1 = histogram(after, "streamlstm_decision_latency_seconds")
    result = {
        "offered_samples_per_s": rate,
        "published": published,
        "processed": processed,
        "lost": published - processed,
        "dropped_by_queue": after["streamlstm_dropped_samples_total"]
        - before["streamlstm_dropped_samples_total"],
        "processed_per_s": processed / wall,
        "seconds": wall,
        "latency_p50_ms": 1000 * quantile(bounds, c0, c1, 0.50),
        "latency_p99_ms": 1000 * quantile(bounds, c0, c1, 0.99),
        # The daemon's own share: host receive -> decision (no broker, no publisher).
        "in_daemon_p50_ms": 1000 * quantile(bounds, d0, d1, 0.50),
        "in_daemon_p99_ms": 1000 * quantile(bounds, d0, d1, 0.99),
        "daemon_cpu_cores": (cpu_seconds(daemon.pid) - cpu0) / wall,
    }
    if sample_rss:
        values = np.array([r for _, r in rss])
        times = np.array([t for t, _ in rss])
        slope = float(np.polyfit(times, values, 1)[0] * 60) if len(values) > 2 else float("nan")
        result.update(
            rss_start_mb=float(values[0]),
            rss_end_mb=float(values[-1]),
            rss_max_mb=float(values.max()),
            rss_slope_mb_per_min=slope,
        )
    return result


# -- the naive baseline ------------------------------------------------------------------------
def naive_subscriber(port: int, model_path: str, expected: int, ready, result) -> None:
    """paho on_message -> torch.nn.LSTM one sample at a time -> residual score -> threshold."""
    import torch

    from streamlstm import formats

    torch.set_num_threads(1)
    model = formats.load(model_path)
    layer = model.layers[0]
    lstm = torch.nn.LSTM(3, layer.hidden_size)
    head = torch.nn.Linear(layer.hidden_size, 3)
    # Same weights when the model takes raw samples; a feature model (the default) gets a
    # raw-sample LSTM of its hidden size, which is what the naive design would run.
    with torch.no_grad():
        if model.input_size != 3:
            return _serve_naive(port, lstm, head, expected, ready, result)
        lstm.weight_ih_l0.copy_(torch.from_numpy(layer.w_ih))
        lstm.weight_hh_l0.copy_(torch.from_numpy(layer.w_hh))
        lstm.bias_ih_l0.copy_(torch.from_numpy(layer.b_ih))
        lstm.bias_hh_l0.copy_(torch.from_numpy(layer.b_hh))
        head.weight.copy_(torch.from_numpy(model.head[0].weight))
        head.bias.copy_(torch.from_numpy(model.head[0].bias))
    _serve_naive(port, lstm, head, expected, ready, result)


def _serve_naive(port: int, lstm, head, expected: int, ready, result) -> None:
    import paho.mqtt.client as paho
    import torch

    threshold = 10.0
    state: dict[str, tuple] = {}
    seen = [0, 0.0, 0.0]  # samples, first time, last time

    def on_message(client, userdata, message):
        if seen[0] == 0:
            # The thread setting is per thread: without it, paho's network thread runs each
            # tiny step on an OpenMP pool, about 60x slower on a 2-core machine.
            torch.set_num_threads(1)
        sensor = message.topic.split("/")[1]
        batch = json.loads(message.payload)
        hc, previous = state.get(sensor, (None, None))
        with torch.no_grad():
            for sample in batch["samples"]:
                x = torch.tensor(sample, dtype=torch.float32)
                if previous is not None and float(((x - previous) ** 2).mean()) > threshold:
                    pass  # an alert decision; the naive design would publish here
                out, hc = lstm(x.view(1, 1, 3), hc)
                previous = head(out[0, 0])
        state[sensor] = (hc, previous)
        if seen[0] == 0:
            seen[1] = time.monotonic()
        seen[0] += len(batch["samples"])
        seen[2] = time.monotonic()

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=paho.MQTTv5
    )
    client.on_message = on_message
    client.on_connect = lambda c, *a: (c.subscribe("bench/+/accel", qos=1), ready.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 600
    while seen[0] < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    client.loop_stop()
    result.put({"processed": seen[0], "seconds": seen[2] - seen[1]})


def run_baseline(args, broker_port: int, model: Path) -> dict:
    sensors = [f"s{i}" for i in range(args.sensors)]
    samples = args.baseline_samples
    ready, result = mp.Event(), mp.Queue()
    per_sensor_batches = max(1, samples // (args.sensors * args.batch))
    expected = per_sensor_batches * args.sensors * args.batch
    worker = mp.Process(
        target=naive_subscriber, args=(broker_port, str(model), expected, ready, result)
    )
    worker.start()
    ready.wait(60)
    time.sleep(0.5)
    cpu0 = time.monotonic()
    # Published in about a second: the subscriber then works through a backlog flat out.
    publish(broker_port, sensors, expected / 1.0, args.batch, 1.0, args.publishers)
    outcome = result.get(timeout=660)
    worker.join(10)
    outcome["processed_per_s"] = outcome["processed"] / max(outcome["seconds"], 1e-9)
    outcome["expected"] = expected
    outcome["wall_s"] = time.monotonic() - cpu0
    return outcome


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--batch", type=int, default=200, help="samples per message")
    parser.add_argument(
        "--hidden",
        type=int,
        help="a random raw-sample LSTM of this size instead of the default model",
    )
    parser.add_argument(
        "--rates", default="100000,200000,300000", help="offered samples/s, stepped"
    )
    parser.add_argument("--step", type=float, default=10.0, help="seconds per capacity step")
    parser.add_argument("--target", type=float, default=200_000, help="soak rate, samples/s")
    parser.add_argument(
        "--soak", type=float, default=60.0, help="soak seconds (600 for the 10-min figure)"
    )
    parser.add_argument("--rss-every", type=float, default=5.0)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--baseline-samples", type=int, default=40_000)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="detector compute threads")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    broker, broker_port = start_broker(folder)
    try:
        return run_all(args, folder, broker_port)
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _sustained(step: dict) -> bool:
    return step["lost"] == 0 and step["processed_per_s"] >= 0.95 * step["offered_samples_per_s"]


def run_all(args: argparse.Namespace, folder: Path, broker_port: int) -> int:
    model = bench_model(folder, args.hidden)
    metrics_port = free_port()
    daemon = start_daemon(folder, broker_port, model, metrics_port, args.threads)
    report: dict = {
        "machine": machine_facts("numba", "numpy", "paho-mqtt"),
        "config": vars(args),
        "capacity": [],
        "soak": None,
        "baseline": None,
    }
    try:
        run_step(args, broker_port, metrics_port, daemon, 20_000, 3.0)  # warm-up (numba, sessions)
        for rate in (float(r) for r in args.rates.split(",")):
            step = run_step(args, broker_port, metrics_port, daemon, rate, args.step)
            report["capacity"].append(step)
            print(
                f"offered {rate:>9,.0f}/s: processed {step['processed_per_s']:>9,.0f}/s, "
                f"lost {step['lost']:.0f}, p50 {step['latency_p50_ms']:.1f} ms, "
                f"p99 {step['latency_p99_ms']:.1f} ms (in daemon {step['in_daemon_p99_ms']:.1f}), "
                f"cpu {step['daemon_cpu_cores']:.2f}",
                flush=True,
            )
        # Soak at the target, or at the highest offered rate this machine sustained.
        sustained_rates = [s["offered_samples_per_s"] for s in report["capacity"] if _sustained(s)]
        soak_rate = args.target
        if sustained_rates and args.target not in sustained_rates:
            soak_rate = min(args.target, max(sustained_rates))
        report["soak_rate"] = soak_rate
        report["soak"] = run_step(
            args, broker_port, metrics_port, daemon, soak_rate, args.soak, sample_rss=True
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    if not args.no_baseline:
        report["baseline"] = run_baseline(args, broker_port, model)

    soak = report["soak"]
    sustained = max([s["processed_per_s"] for s in report["capacity"] if _sustained(s)] or [0.0])
    report["sustained_samples_per_s"] = sustained
    print()
    print(f"{'':<34}{'streamlstm daemon':>20}{'naive paho+torch':>20}{'ratio':>10}")
    base = report["baseline"]["processed_per_s"] if report["baseline"] else float("nan")
    print(f"{'samples/s (no loss)':<34}{sustained:>20,.0f}{base:>20,.0f}{sustained / base:>9.1f}x")
    print(
        f"{'soak offered / processed samples/s':<34}{report['soak_rate']:>9,.0f} / "
        f"{soak['processed_per_s']:,.0f}"
    )
    print(
        f"{'soak p50 / p99 latency (ms)':<34}{soak['latency_p50_ms']:>9.1f} / "
        f"{soak['latency_p99_ms']:<8.1f}"
    )
    print(
        f"{'soak in-daemon p50 / p99 (ms)':<34}{soak['in_daemon_p50_ms']:>9.1f} / "
        f"{soak['in_daemon_p99_ms']:<8.1f}"
    )
    print(f"{'soak daemon CPU (cores)':<34}{soak['daemon_cpu_cores']:>20.2f}")
    print(
        f"{'soak RSS start/end/max (MB)':<34}{soak['rss_start_mb']:>8.1f} / "
        f"{soak['rss_end_mb']:.1f} / "
        f"{soak['rss_max_mb']:.1f}"
    )
    print(f"{'soak RSS slope (MB/min)':<34}{soak['rss_slope_mb_per_min']:>20.2f}")
    print(f"{'soak lost samples':<34}{soak['lost']:>20.0f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_daemon.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten {RESULTS / 'bench_daemon.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
