"""Fleet benchmark: workers on a private nats-server (JetStream) on this machine (not a test).

Sensors' JSON batches (``{"t", "rate", "samples"}``) are published to ``sensors.<id>.accel``
with JetStream acknowledgements; the server's subject mapping hashes them into P
partitions (the same mapping the MQTT path uses; ``intake = "nats"`` skips the MQTT
listener so that the publisher is not the bottleneck). Workers are ``streamlstm run``
subprocesses with a ``[fleet]`` section, measured from their Prometheus endpoints:

1. drain rate with 1, 2, ... workers: a backlog published while the workers are paused
   (SIGSTOP, their partitions already owned, a lease TTL longer than the pause), then the
   time from resuming them until every message is applied; samples/s and per CPU second;
2. the same messages decoded and stepped in one process without NATS (the daemon's
   compute path: parse, Detector.update): the fleet path's overhead against it;
3. SIGKILL of one of two workers mid-drain: takeover time (kill to the survivor owning
   every partition) and replay (messages applied again, and how long until the survivor
   passed the dead worker's ack floor).

    PYTHONPATH=. python benchmarks/bench_fleet.py                        # ~2 minutes
    PYTHONPATH=. python benchmarks/bench_fleet.py --workers 1,2,4 --messages 40000

Writes ``benchmarks/results/bench_fleet.json``. On a shared machine the figures are
indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from harness import accepts, cpu_seconds, free_port, machine_facts, wait_for

from streamlstm.daemon.metrics import scrape

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RATE = 50.0  # the shipped default model's sample rate
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class Server:
    def __init__(self, folder: Path, partitions: int) -> None:
        self.port = free_port()
        mapping = f"part.{{{{partition({partitions},1)}}}}.sensors.{{{{wildcard(1)}}}}.accel"
        config = folder / "nats.conf"
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\nserver_name: bench\n"
            f'jetstream {{ store_dir: "{folder}/js" }}\n'
            "accounts { B { jetstream: enabled, users: [{user: b, password: b}],\n"
            f'  mappings: {{ "sensors.*.accel": "{mapping}" }} }} }}\nno_auth_user: b\n'
        )
        self.process = subprocess.Popen(
            [NATS_SERVER, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: accepts(self.port), 15, "nats-server")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(15)


class Worker:
    def __init__(self, folder: Path, name: str, server: Server, args, ttl: float) -> None:
        self.name, self.port = name, free_port()
        site = folder / f"{name}.toml"
        site.write_text(f"""
[daemon]
metrics_port = {self.port}
log_level = "warning"
[mqtt]
client_id = "{name}"
[[sources]]
type = "mqtt"
topic = "sensors/{{sensor}}/accel"
[[sinks]]
type = "jsonl"
path = "{name}-alerts.jsonl"
[fleet]
servers = ["nats://127.0.0.1:{server.port}"]
partitions = {args.partitions}
intake = "nats"
lease_ttl_s = {ttl}
snapshot_interval_s = {args.snapshot_interval}
journal_path = "{name}.journal"
""")
        self.log = open(folder / f"{name}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlstm.cli", "run", "--config", str(site)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def metric(self, name: str) -> float:
        try:
            return scrape(self.port).get(name, 0.0)
        except OSError:
            return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(120)
        self.log.close()


def messages(args) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    per_sensor = args.messages // args.sensors
    for index in range(per_sensor):
        for sensor in range(args.sensors):
            block = rng.normal(size=(args.per_message, 3)).astype(np.float32)
            body = {
                "t": index * args.per_message / RATE,
                "rate": RATE,
                "samples": block.round(4).tolist(),
            }
            out.append((f"s{sensor}", json.dumps(body).encode()))
    return out


async def publish(port: int, batch: list[tuple[str, bytes]]) -> float:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    started = time.perf_counter()
    window = 500
    for begin in range(0, len(batch), window):
        await asyncio.gather(
            *(js.publish(f"sensors.{s}.accel", body) for s, body in batch[begin : begin + window])
        )
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed


def applied(workers: list[Worker]) -> float:
    return sum(w.metric("streamlstm_fleet_messages_total") for w in workers)


def owned(workers: list[Worker]) -> float:
    return sum(
        w.metric("streamlstm_fleet_owned_partitions") for w in workers if w.process.poll() is None
    )


def drain(count: int, args, batch, folder: Path) -> dict:
    """``count`` workers drain a backlog of ``batch``; returns their rate and CPU."""
    server = Server(folder, args.partitions)
    workers = []
    try:
        for index in range(count):
            workers.append(Worker(folder, f"w{index}", server, args, args.drain_ttl))
        share = -(-args.partitions // count)
        wait_for(
            lambda: (
                owned(workers) == args.partitions
                and all(w.metric("streamlstm_fleet_owned_partitions") >= share - 1 for w in workers)
            ),
            300,
            "partitions spread over the workers",
        )
        for worker in workers:
            worker.process.send_signal(signal.SIGSTOP)
        publish_s = asyncio.run(publish(server.port, batch))
        if publish_s > args.drain_ttl / 3:
            raise RuntimeError("publishing took too long for --drain-ttl: raise it")
        cpu0 = [cpu_seconds(w.process.pid) for w in workers]
        server0 = cpu_seconds(server.process.pid)
        started = time.perf_counter()
        for worker in workers:
            worker.process.send_signal(signal.SIGCONT)
        wait_for(lambda: applied(workers) >= len(batch), 600, "the backlog applied")
        elapsed = time.perf_counter() - started
        cores = sum(cpu_seconds(w.process.pid) - c for w, c in zip(workers, cpu0, strict=True))
        server_cores = (cpu_seconds(server.process.pid) - server0) / elapsed
        samples = len(batch) * args.per_message
        return {
            "workers": count,
            "messages": len(batch),
            "samples": samples,
            "publish_s": publish_s,
            "elapsed_s": elapsed,
            "samples_per_s": samples / elapsed,
            "worker_cpu_cores": cores / elapsed,
            "server_cpu_cores": server_cores,
            "samples_per_cpu_s": samples / cores if cores else None,
        }
    finally:
        for worker in workers:
            worker.stop()
        server.close()


def in_process(batch, args) -> dict:
    """The same messages parsed and stepped in one process, no NATS (the compute path)."""
    from streamlstm.daemon.config import validate
    from streamlstm.daemon.pipeline import compile_kernels, load_model, make_detector
    from streamlstm.sources.parsers import decode_json

    loaded = load_model(None)
    site = validate({"sources": [{"type": "mqtt", "topic": "sensors/{sensor}/accel"}]})
    compile_kernels(loaded.model, site)
    detector = make_detector(loaded.model, site.detector)
    width = int(getattr(detector, "axes", loaded.model.input_size))
    started, cpu = time.perf_counter(), time.process_time()
    for begin in range(0, len(batch), args.fetch):
        chunk = batch[begin : begin + args.fetch]
        blocks = [decode_json(body, width, max_samples=65536) for _, body in chunk]
        sensors = [s for (s, _), b in zip(chunk, blocks, strict=True) for _ in b.samples]
        samples = np.concatenate([b.samples for b in blocks])
        times = np.concatenate([b.t + np.arange(len(b.samples)) / RATE for b in blocks])
        detector.update(sensors, samples, times)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    samples = len(batch) * args.per_message
    return {
        "samples": samples,
        "elapsed_s": elapsed,
        "samples_per_s": samples / elapsed,
        "cpu_cores": cpu / elapsed,
        "samples_per_cpu_s": samples / cpu,
    }


def kill_one(args, batch, folder: Path) -> dict:
    """Two workers; one SIGKILLed mid-drain: takeover and replay."""
    server = Server(folder, args.partitions)
    workers = [Worker(folder, "a", server, args, args.ttl)]
    try:
        wait_for(lambda: owned(workers) == args.partitions, 300, "worker a owning all")
        workers.append(Worker(folder, "b", server, args, args.ttl))
        wait_for(
            lambda: (
                workers[1].metric("streamlstm_fleet_owned_partitions") == args.partitions // 2
                and owned(workers) == args.partitions
            ),
            300,
            "a balanced fleet",
        )
        asyncio.run(publish(server.port, batch))
        wait_for(lambda: applied(workers) >= len(batch) / 3, 600, "a third applied")
        killed = time.time()
        workers[0].process.kill()
        survivor = workers[1]
        wait_for(
            lambda: survivor.metric("streamlstm_fleet_owned_partitions") == args.partitions,
            120,
            "the survivor owning every partition",
        )
        takeover = time.time() - killed
        journal = folder / "b.journal"

        def replays_done() -> list[float] | None:
            events = [json.loads(line) for line in journal.read_text().splitlines()]
            done = []
            for event in (e for e in events if e["event"] == "acquired" and e["time"] > killed):
                passed = [
                    e["time"]
                    for e in events
                    if e["event"] == "applied"
                    and (e["partition"], e["epoch"]) == (event["partition"], event["epoch"])
                    and e["last"] >= event["replay_until"]
                ]
                if not passed:
                    return None
                done.append(min(passed) - event["time"])
            return done

        replay_done = wait_for(replays_done, 300, "the replays to finish")
        return {
            "takeover_s": takeover,
            "ttl_s": args.ttl,
            "replayed_messages": survivor.metric("streamlstm_fleet_replayed_messages_total"),
            "replay_s_max": max(replay_done) if replay_done else None,
        }
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL if worker is workers[0] else signal.SIGTERM)
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to drain with")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-message", type=int, default=10)
    parser.add_argument("--fetch", type=int, default=1000, help="messages per step in process")
    parser.add_argument("--ttl", type=float, default=3.0, help="lease TTL for the SIGKILL run")
    parser.add_argument(
        "--drain-ttl",
        type=float,
        default=60.0,
        help="lease TTL for the drain runs (outlasts the paused publishing)",
    )
    parser.add_argument("--snapshot-interval", type=float, default=1.0)
    args = parser.parse_args()
    if not Path(NATS_SERVER).exists():
        sys.exit("bench_fleet: nats-server is not installed (apt-get install nats-server)")
    batch = messages(args)
    results: dict = {"machine": machine_facts("numba", "nats-py"), "args": vars(args)}
    results["in_process"] = in_process(batch, args)
    bare = results["in_process"]
    print(
        f"in process (no NATS): {bare['samples_per_s']:,.0f} samples/s, "
        f"{bare['cpu_cores']:.2f} cores ({bare['samples_per_cpu_s']:,.0f} per CPU second)"
    )
    results["drain"] = []
    for count in map(int, args.workers.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            row = drain(count, args, batch, Path(folder))
        results["drain"].append(row)
        print(
            f"{count} worker(s): {row['samples_per_s']:,.0f} samples/s, workers "
            f"{row['worker_cpu_cores']:.2f} cores ({row['samples_per_cpu_s'] or 0:,.0f} "
            f"samples per CPU second), nats-server {row['server_cpu_cores']:.2f} cores"
        )
    with tempfile.TemporaryDirectory() as folder:
        results["sigkill"] = kill_one(args, batch, Path(folder))
    kill = results["sigkill"]
    print(
        f"SIGKILL: takeover {kill['takeover_s']:.2f} s (TTL {args.ttl:g} s), "
        f"{kill['replayed_messages']:.0f} messages replayed, replay done within "
        f"{kill['replay_s_max'] or 0:.2f} s of the takeover"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_fleet.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
