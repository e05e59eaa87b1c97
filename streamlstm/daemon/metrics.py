"""Prometheus text exposition (format 0.0.4) from a tiny registry, served by ``http.server``.

Counters and histograms are updated from the compute thread; values owned by other
threads (source counters, queue depth, connection flags) are read at scrape time by
*collector* callbacks, so the hot path never takes a lock for them.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # (metric name, labels, value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels) + "}"


class Histogram:
    """Cumulative-bucket histogram in seconds."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def samples(self, name: str) -> list[Sample]:
        out: list[Sample] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((f"{name}_bucket", (("le", repr(bound)),), running))
        out.append((f"{name}_bucket", (("le", "+Inf"),), self.count))
        out += [(f"{name}_sum", (), self.total), (f"{name}_count", (), self.count)]
        return out


class Metrics:
    """Named metrics with help text; :meth:`render` produces the exposition text."""

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._values: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[str, Histogram] = {}
        self._collectors: list[Callable[[], Iterable[Sample]]] = []
        self._lock = threading.Lock()

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, labels: Labels = ()) -> None:
        key = (name, labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: Labels = ()) -> None:
        self._values[(name, labels)] = value

    def histogram(self, name: str, buckets: Iterable[float]) -> Histogram:
        return self._histograms.setdefault(name, Histogram(buckets))

    def collector(self, callback: Callable[[], Iterable[Sample]]) -> None:
        with self._lock:
            self._collectors.append(callback)

    def value(self, name: str, labels: Labels = ()) -> float:
        return self._values.get((name, labels), 0.0)

    def render(self) -> str:
        samples: list[Sample] = [(n, lab, v) for (n, lab), v in list(self._values.items())]
        for name, histogram in list(self._histograms.items()):
            samples += histogram.samples(name)
        with self._lock:
            collectors = list(self._collectors)
        for collect in collectors:
            samples += list(collect())
        lines = []
        for name, (kind, text) in sorted(self._help.items()):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for sample_name, labels, value in samples:
                if sample_name == name or (
                    kind == "histogram" and sample_name.rsplit("_", 1)[0] == name
                ):
                    lines.append(f"{sample_name}{_labels(labels)} {value:.17g}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``GET /metrics`` on ``host:port`` (port 0 picks a free one) from a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Read a metrics endpoint back as ``{'name{labels}': value}`` (for tests and benchmarks)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values
