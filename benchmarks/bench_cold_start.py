"""Cold-start benchmark: what a newcomer waits for before Numba's cache is warm.

    python benchmarks/bench_cold_start.py [--only run,readme,kernels] [--json out.json]

Each part runs in a fresh interpreter with a fresh, empty ``NUMBA_CACHE_DIR``, so every
kernel is compiled from scratch:

* ``run``: the first ``streamlstm run`` (the demo), seconds from launch until its ALERT
  line is printed, and until it exits;
* ``readme``: the README's Python example (the first ``python`` block under "Use it from
  Python"; needs the torch extra), seconds until it exits;
* ``kernels``: which functions Numba compiles, and how long each took (Numba's
  ``numba:compile`` events: inclusive time, and exclusive of the compiles nested in it),
  for a Stream.step, Stream.run, Bank.step of 4,096 sensors and a Detector.update of 1 and
  of 64 samples on the shipped default model.

Wall-clock figures: on a shared machine they move with the load (say so when quoting).
Each part also reports the CPU seconds (user + system) its child process used, which a
shared machine moves much less: quote those when comparing compile work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KERNEL_PROBE = r"""
import json, sys, time
from collections import defaultdict
from numba.core import event
import numpy as np

records = []  # (name, signature, start, end, nested time)
stack = []


class Recorder(event.Listener):
    def on_start(self, ev):
        stack.append([ev.data["dispatcher"], ev.data["args"], time.perf_counter(), 0.0])

    def on_end(self, ev):
        dispatcher, args, start, nested = stack.pop()
        took = time.perf_counter() - start
        if stack:
            stack[-1][3] += took
        name = getattr(dispatcher, "py_func", dispatcher)
        name = f"{name.__module__}.{name.__qualname__}"
        records.append((name, str(args), took, took - nested))


event.register("numba:compile", Recorder())
import streamlstm as sl
from streamlstm.bank import PARALLEL_THRESHOLD

phases = {}
from streamlstm.data import DEFAULT_MODEL_PATH
model = sl.load(DEFAULT_MODEL_PATH)


def phase(name, fn):
    begin = time.perf_counter()
    fn()
    phases[name] = time.perf_counter() - begin


stream = model.stream()
x = np.zeros((10_000, model.input_size), model.dtype)
phase("Stream.step", lambda: stream.step(x[0]))
phase("Stream.run", lambda: stream.run(x))
bank = model.bank(capacity=4096)
ids = list(range(4096))
phase("Bank.step 4096", lambda: bank.step(ids, x[:4096]))
det = sl.Detector(model, capacity=PARALLEL_THRESHOLD)
width = getattr(det, "axes", model.input_size)
phase("Detector.update 1", lambda: det.update(["a"], np.zeros((1, width), np.float32),
                                              np.zeros(1)))
phase("Detector.update 64", lambda: det.update(
    ["s%d" % i for i in range(PARALLEL_THRESHOLD)],
    np.zeros((PARALLEL_THRESHOLD, width), np.float32),
    np.ones(PARALLEL_THRESHOLD)))
json.dump({"phases": phases, "compiles": records}, sys.stdout)
"""


def _child_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fresh_env(cache: str) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def first_run() -> dict[str, float]:
    """Seconds until the demo's first ALERT line, and until it exits."""
    with tempfile.TemporaryDirectory() as cache:
        begin, cpu = time.perf_counter(), _child_cpu()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlstm.cli", "run"],
            env=_fresh_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        alert = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if alert is None and "ALERT" in line:
                alert = time.perf_counter() - begin
        proc.wait(timeout=600)
        total = time.perf_counter() - begin
    if alert is None:
        raise SystemExit(f"streamlstm run printed no alert (exit {proc.returncode})")
    return {"first_alert_s": alert, "exit_s": total, "cpu_s": _child_cpu() - cpu}


def readme_example() -> dict[str, float]:
    """Seconds for the README's Python example, cold, in a scratch directory."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        script = Path(work, "example.py")
        script.write_text(code)
        begin, cpu = time.perf_counter(), _child_cpu()
        subprocess.run(
            [sys.executable, str(script)],
            cwd=work,
            env=_fresh_env(cache),
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=900,
        )
        return {"exit_s": time.perf_counter() - begin, "cpu_s": _child_cpu() - cpu}


def kernel_compiles() -> dict:
    """Numba's compile events for the common calls, in a fresh interpreter and cache."""
    with tempfile.TemporaryDirectory() as cache:
        cpu = _child_cpu()
        done = subprocess.run(
            [sys.executable, "-c", KERNEL_PROBE],
            env=_fresh_env(cache),
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    return {**json.loads(done.stdout), "cpu_s": _child_cpu() - cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default="run,readme,kernels", help="comma-separated parts: run, readme, kernels"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if "run" in parts:
        results["run"] = first_run()
        print(
            f"first `streamlstm run`: alert after {results['run']['first_alert_s']:.1f} s, "
            f"exit after {results['run']['exit_s']:.1f} s ({results['run']['cpu_s']:.1f} CPU s)"
        )
    if "readme" in parts:
        results["readme"] = readme_example()
        readme = results["readme"]
        print(f"README Python example: {readme['exit_s']:.1f} s ({readme['cpu_s']:.1f} CPU s)")
    if "kernels" in parts:
        probe = kernel_compiles()
        results["kernels"] = probe
        print("first call of (s, includes compiling):")
        for name, took in probe["phases"].items():
            print(f"  {name:<22} {took:7.1f}")
        print("compiled functions (s inclusive / exclusive of nested compiles):")
        for name, sig, took, own in sorted(probe["compiles"], key=lambda r: -r[3]):
            print(f"  {took:7.1f} {own:7.1f}  {name}{sig[:70]}")
        print(
            f"  {len(probe['compiles'])} compiles, "
            f"{sum(r[3] for r in probe['compiles']):.1f} s in all; "
            f"the probe process used {probe['cpu_s']:.1f} CPU s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
