"""What every benchmark here shares: timing, the machine's description, and the process and
network helpers of the end-to-end benchmarks. Not a test helper: nothing here asserts.

    from harness import machine_facts, median_time
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def median_time(fn: Callable[[], Any], *, repeats: int, inner: int = 1) -> float:
    """Median over ``repeats`` of the mean wall time of ``inner`` calls, in seconds, after
    ``max(1, inner // 10)`` untimed calls."""
    for _ in range(max(1, inner // 10)):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def best_time_of_rounds(
    run: Callable[[int], Any], *, rounds: int, seconds: float, repeats: int
) -> tuple[int, float]:
    """A machine-limit kernel's ``run(rounds)`` sized to take about ``seconds`` (from
    ``rounds``, growing fourfold), then timed ``repeats`` times: ``(rounds, best time)``.

    The best, not the median: a limit is a property of the machine, and on a shared
    machine every disturbance makes a timing slower, never faster.
    """
    while True:
        begin = time.perf_counter()
        run(rounds)
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds / 4:
            break
        rounds *= 4
    rounds = max(1, int(rounds * seconds / elapsed))
    timings = []
    for _ in range(repeats):
        begin = time.perf_counter()
        run(rounds)
        timings.append(time.perf_counter() - begin)
    return rounds, min(timings)


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], *, repeats: int, turn_s: float = 0.02
) -> dict[str, float]:
    """Median wall time of a call of each of ``fns``, in seconds, timed in turns: every
    round gives each a turn (the order rotating), so that a slow spell of a shared machine
    weighs on all of them alike instead of on whichever was being timed. A turn is one
    untimed call, which brings the function's data back into the caches the others
    used, then enough timed calls to last about ``turn_s`` (their mean is the sample)."""
    calls = {}
    for name, fn in fns.items():
        fn()  # a first call may compile or load: not one to size the turns by
        start = time.perf_counter()
        fn()
        calls[name] = max(1, math.ceil(turn_s / max(time.perf_counter() - start, 1e-9)))
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            fn, count = fns[name], calls[name]
            fn()
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[name].append((time.perf_counter() - start) / count)
    return {name: statistics.median(times) for name, times in samples.items()}


def machine_facts(*packages: str) -> dict[str, Any]:
    """The processor, core count, Python and the versions of ``packages`` (when installed)."""
    facts: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for name in packages:
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = None
    return facts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` every 50 ms until truthy; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (NaN if the kernel does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A mosquitto for throughput runs on 127.0.0.1: no persistence, unbounded queues."""
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    broker = subprocess.Popen(
        [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: accepts(port), 10, "mosquitto")
    return broker, port
