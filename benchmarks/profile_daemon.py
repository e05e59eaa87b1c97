"""Where the daemon's time per sample goes, stage by stage, with cProfile (not a test).

    PYTHONPATH=. python benchmarks/profile_daemon.py [--hidden 64] [--batch 50] [--top 12]

``bench_daemon.py`` measures the daemon end to end; this script takes the same traffic
(K sensors, ``--batch``-sample JSON messages in the documented payload, the same model)
apart, in one process, so each stage's cost per sample can be read off:

1. paho: a real mosquitto delivers the messages (QoS 1) to a paho client whose callback
   does nothing; the client's network thread's CPU time per message is paho's share
   (socket reads, packet parsing, PUBACKs). Skipped with ``--no-broker``;
2. intake: the MQTT source's message callback on each message (topic match, JSON decode,
   Frame, queue put), as paho's network thread runs it;
3. compute: the compute loop's turn (queue take, timestamp gate, per-sample sensor list,
   detector step, per-frame bookkeeping, acknowledgements) over the queued frames.

Stages 2 and 3 run twice: timed alone, then under cProfile, whose top functions by own
time are printed; stage 2 is also timed with the standard library's JSON parser in place
of the optional ``orjson``. Timings are thread CPU time (``time.thread_time``), so a shared
machine's other load inflates them less than wall time would.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon import bench_model, start_broker

from streamlstm.daemon.config import validate
from streamlstm.daemon.engine import Daemon
from streamlstm.daemon.pipeline import compile_kernels
from streamlstm.sources import parsers


def payloads(
    sensors: int, batch: int, messages: int, rate: float, start: float
) -> list[tuple[str, bytes]]:
    """``messages`` (topic, payload) pairs as bench_daemon's publishers send them, device
    times from ``start`` on (``rate``: samples/s of all sensors together)."""
    rng = np.random.default_rng(0)
    bodies = [json.dumps(rng.normal(size=(batch, 3)).round(4).tolist()) for _ in range(8)]
    out = []
    for k in range(messages):
        sensor, tick = k % sensors, k // sensors
        t0 = start + tick * batch * sensors / rate
        text = f'{{"t": {t0:.6f}, "rate": {rate / sensors}, "samples": {bodies[k % 8]}}}'
        out.append((f"bench/s{sensor}/accel", text.encode()))
    return out


def make_daemon(folder: Path, model: Path, batch_samples: int) -> Daemon:
    config = validate(
        {
            "daemon": {
                "backpressure": "block",
                "queue_frames": 10**6,
                "batch_samples": batch_samples,
                "log_level": "warning",
            },
            "model": {"path": str(model)},
            "mqtt": {"host": "127.0.0.1", "port": 1},  # never connected here
            "sources": [
                {"type": "mqtt", "topic": "bench/{sensor}/accel", "payload": "json", "qos": 1}
            ],
            "sinks": [{"type": "jsonl", "path": "alerts.jsonl"}],
        },
        base=folder,
    )
    return Daemon(config)


def messages_of(pairs: list[tuple[str, bytes]]) -> list[paho.MQTTMessage]:
    out = []
    for mid, (topic, payload) in enumerate(pairs, 1):
        message = paho.MQTTMessage(mid, topic.encode())
        message.payload = payload
        message.qos = 1
        out.append(message)
    return out


def intake(daemon: Daemon, messages: list[paho.MQTTMessage]) -> None:
    source = daemon.sources[0]
    source._emit = daemon.queue.put  # what MQTTSource.run sets before paho calls back
    for message in messages:
        source._on_message(None, None, message)


def compute(daemon: Daemon, batch_samples: int) -> int:
    turns = 0
    while len(daemon.queue):
        daemon.process(daemon.queue.take(batch_samples, 0.0, 0.0))
        turns += 1
    return turns


def profiled(fn, top: int) -> str:
    profile = cProfile.Profile()
    profile.enable()
    fn()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(top)
    return "\n".join(
        line
        for line in text.getvalue().splitlines()
        if line.strip() and not line.startswith(("   Ordered", "Ordered"))
    )


def thread_seconds(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def paho_cost(pairs: list[tuple[str, bytes]], folder: Path) -> float:
    """CPU seconds per message of a paho client's network thread with a no-op callback."""
    broker, port = start_broker(folder)
    try:
        got = threading.Event()
        count = [0]
        cpu = [0.0, 0.0]

        def on_message(client, userdata, message) -> None:
            count[0] += 1
            if count[0] == 1:
                cpu[0] = time.thread_time()
            if count[0] == len(pairs):
                cpu[1] = time.thread_time()
                got.set()

        sub = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="prof-sub", protocol=paho.MQTTv5
        )
        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.subscribe("bench/+/accel", qos=1)
        sub.loop_start()
        time.sleep(0.5)
        pub = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="prof-pub", protocol=paho.MQTTv5
        )
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for topic, payload in pairs:
            pub.publish(topic, payload, qos=1)
        if not got.wait(300):
            raise TimeoutError(f"only {count[0]} of {len(pairs)} messages arrived")
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
        return (cpu[1] - cpu[0]) / (len(pairs) - 1)
    finally:
        broker.terminate()
        broker.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hidden",
        type=int,
        default=64,
        help="raw-sample LSTM of this size (0: the shipped default model)",
    )
    parser.add_argument("--batch", type=int, default=50, help="samples per message")
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200_000, help="samples per stage")
    parser.add_argument("--top", type=int, default=12, help="functions listed per profile")
    parser.add_argument("--no-broker", action="store_true", help="skip the paho stage")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = bench_model(folder, args.hidden or None)
        daemon = make_daemon(folder, model, 8192)
        compile_kernels(daemon.loaded.model, daemon.config)
        batch_samples = daemon.config.daemon.batch_samples
        count = max(args.sensors, args.samples // args.batch)
        # Each sensor at the model's sample rate (or 1 kHz), as a deployment would send.
        rate = (daemon.loaded.model.sample_rate or 1000.0) * args.sensors
        span = count * args.batch / rate
        # Four sets (warm-up, timed, timed with the standard JSON parser, profiled) with
        # device times one after the other and all in the past, so the gate admits them all.
        first = time.time() - 4 * span - 1
        sets = [payloads(args.sensors, args.batch, count, rate, first + k * span) for k in range(4)]
        samples = count * args.batch
        print(
            f"{count} messages of {args.batch} samples, {args.sensors} sensors, model "
            f"{'shipped default' if not args.hidden else f'LSTM H={args.hidden}'}"
        )
        if not args.no_broker:
            per_message = paho_cost(sets[0], folder)
            print(
                f"1. paho network thread, no-op callback: {per_message * 1e6:.1f} us/message "
                f"= {per_message / args.batch * 1e6:.3f} us/sample"
            )
        intake(daemon, messages_of(sets[0]))
        compute(daemon, batch_samples)
        messages = messages_of(sets[1])
        seconds_intake = thread_seconds(lambda: intake(daemon, messages))
        seconds_compute = thread_seconds(lambda: compute(daemon, batch_samples))
        messages = messages_of(sets[2])
        installed, parsers.orjson = parsers.orjson, None
        seconds_stdlib = thread_seconds(lambda: intake(daemon, messages))
        parsers.orjson = installed
        compute(daemon, batch_samples)
        messages = messages_of(sets[3])
        print(profiled(lambda: intake(daemon, messages), args.top))
        print(profiled(lambda: compute(daemon, batch_samples), args.top))
        stepped = daemon.metrics.value("streamlstm_samples_total")
        if stepped != 4 * samples:
            sys.exit(f"only {stepped:.0f} of {4 * samples} samples were stepped")
        print(
            f"2. intake: {seconds_intake / samples * 1e6:.3f} us/sample "
            f"({'orjson' if installed else 'json'}; with the standard library's json: "
            f"{seconds_stdlib / samples * 1e6:.3f})"
        )
        print(f"3. compute: {seconds_compute / samples * 1e6:.3f} us/sample")
        daemon.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
