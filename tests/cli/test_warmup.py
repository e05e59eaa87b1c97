"""Cold start as a person meets it: the compile is announced, Ctrl-C works during it, and
``streamlstm warmup`` leaves a cache that the next run compiles nothing from."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from numba import njit

from streamlstm.cli.warmup import COMPILING_NOTICE, compile_interruptibly

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cache: Path | None = None, **kwargs) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    return subprocess.Popen(
        [sys.executable, "-m", "streamlstm.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_the_notice_comes_only_when_numba_compiles():
    @njit
    def add_one(x):
        return x + 1

    said = io.StringIO()
    compile_interruptibly(lambda: add_one(1), prefix="t", stream=said)
    assert said.getvalue().startswith(f"t: {COMPILING_NOTICE}\n")
    again = io.StringIO()
    compile_interruptibly(lambda: add_one(2), prefix="t", stream=again)
    assert again.getvalue() == ""  # compiled already: nothing to announce


def test_a_failure_in_the_worker_is_raised_in_the_caller():
    def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        compile_interruptibly(broken, stream=io.StringIO())


def test_ctrl_c_interrupts_a_cold_compile(tmp_path):
    """A fresh cache: the first run announces the compile; SIGINT ends it at once, 130."""
    proc = _cli("run", cache=tmp_path / "numba")
    try:
        deadline = time.monotonic() + 120
        lines = []
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if COMPILING_NOTICE in line or not line:
                break
        assert COMPILING_NOTICE in lines[-1], lines
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        assert proc.wait(timeout=30) == 130
        assert time.monotonic() - interrupted < 10
        assert "interrupted" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_warmup_leaves_nothing_to_compile_for_the_same_site(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[[sinks]]\ntype = "stdout"\n')
    first = _cli("warmup", "--config", str(site))
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err
    assert "kernels ready for accel-default" in out
    second = _cli("warmup", "--config", str(site))
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert COMPILING_NOTICE not in err  # every kernel came from the cache
    assert "kernels ready for accel-default (float32)" in out


def test_warmup_refuses_an_unknown_dtype():
    proc = _cli("warmup", "--dtype", "float16")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--dtype: expected float32 and/or float64" in err


def test_one_sensors_samples_never_wake_the_thread_pool():
    import numpy as np

    from streamlstm.bank import PARALLEL_THRESHOLD, runs_in_parallel
    from streamlstm.kernels import SENSORS_PER_TASK

    one = np.full(PARALLEL_THRESHOLD, 3, np.int64)
    two = one.copy()
    two[-1] = 4
    assert runs_in_parallel(2, two)
    assert not runs_in_parallel(1, two)  # one thread
    assert not runs_in_parallel(2, one)  # one sensor: the kernels run sensors in parallel
    assert not runs_in_parallel(2, two[1:])  # below the threshold
    # The bank's parallel tasks take SENSORS_PER_TASK sensors each: fewer are one task.
    few = np.arange(PARALLEL_THRESHOLD) % SENSORS_PER_TASK
    assert not runs_in_parallel(2, few, SENSORS_PER_TASK)
    more = few.copy()
    more[-1] = SENSORS_PER_TASK  # one sensor more
    assert runs_in_parallel(2, more, SENSORS_PER_TASK)


BANK_COMPILED = """
import numpy as np
import streamlstm as sl
from streamlstm.kernels import bank_kernels, bank_step_in_order
from streamlstm.packing import packed

model = sl.random_model(3, [8], output_size=3, seed=0)
bank = model.bank(capacity=64, threads=2)
bank.step(["a", "b", "a"], np.zeros((3, 3), np.float32))
bank.run(["a", "b"], np.zeros((2, 50, 3), np.float32))  # 100 samples, 2 sensors: one task
kind = packed(model).kernel_kind
serial, parallel = bank_kernels(kind)
print(len(bank_step_in_order(kind).signatures), len(serial.signatures), len(parallel.signatures))
"""


def test_a_few_sensors_compile_neither_the_tiled_nor_the_parallel_bank():
    """The README example's ``bank.step`` and ``bank.run`` of two sensors: too few for a
    tile of four, so they are stepped in order and neither tiled kernel is compiled."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, "-c", BANK_COMPILED],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0", "0"]


PARALLEL_COMPILED = """
import json, sys
from streamlstm.daemon import config
from streamlstm.daemon.pipeline import compile_kernels, load_model
from streamlstm.detect._kernel import detect_kernels
from streamlstm.packing import packed

site = config.validate({"sources": [{"type": sys.argv[1], **json.loads(sys.argv[2])}]})
model = load_model(None).model
compile_kernels(model, site)
serial, parallel = detect_kernels(packed(model).kernel_kind)
print(len(serial.signatures), len(parallel.signatures))
"""


@pytest.mark.parametrize(
    "source,extra,compiled",
    [
        ("demo", "{}", "1 0"),
        ("mqtt", '{"topic": "sensors/{sensor}/accel"}', "1 1"),
        # One serial port, but its lines name their sensor: several sensors per batch.
        ("serial", '{"port": "/dev/null", "columns": [1, 2, 3], "sensor_column": 0}', "1 1"),
    ],
)
def test_the_parallel_detector_is_compiled_only_where_a_batch_can_hold_several_sensors(
    source, extra, compiled
):
    """The demo (one sensor per batch) never takes the parallel kernel, so its first run
    does not compile it; an MQTT site does, before READY."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", PARALLEL_COMPILED, source, extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == compiled


# -- window models ------------------------------------------------------------------------

WINDOW_COMPILED = """
import json, sys
from streamlstm import formats
from streamlstm.daemon import config
from streamlstm.daemon.pipeline import compile_kernels
from streamlstm.kernels import _window as K
from streamlstm.windows.packing import packed_windows

site = config.validate(json.loads(sys.argv[1]))
model = formats.load(site.model.path)
compile_kernels(model, site)
kernels = (K.assemble_windows, K.window_kernel(packed_windows(model, model.window).kind))
print(*(len(kernel.signatures) for kernel in kernels))
"""


def _window_classifier(path: Path) -> Path:
    """A 3-input GRU classifier (H=4), windows of W=8 every K=4 samples."""
    import streamlstm as sl
    from streamlstm import formats

    model = sl.random_model(3, [4], kind="gru", output_size=2, seed=3).replace(
        metadata={"window": {"length": 8, "hop": 4, "output": "probabilities"}}
    )
    formats.save(model, path)
    return path


MQTT = {"type": "mqtt", "topic": "sensors/{sensor}/accel"}


@pytest.mark.parametrize(
    "sources,daemon,detector,compiled",
    [
        # Several sensors per batch, many windows per push: one evaluator all the same.
        ([MQTT], {"batch_samples": 4}, {}, "1 1"),
        # The GPU evaluates the windows: only the host's ring kernel runs on the CPU.
        pytest.param([MQTT], {}, {"device": "cuda"}, "1 0", marks=pytest.mark.cuda),
    ],
)
def test_a_window_models_site_compiles_the_window_kernels_its_pushes_take(
    tmp_path, sources, daemon, detector, compiled
):
    """The ring (assemble_windows) and the evaluator, which runs every push's windows, on
    any number of threads; on the GPU the ring alone."""
    if detector.get("device") == "cuda":
        pytest.importorskip("numba.cuda", reason="numba-cuda not installed")
    site = {
        "model": {"path": str(_window_classifier(tmp_path / "classes.npz"))},
        "sources": sources,
        "daemon": daemon,
        "detector": detector,
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run(
        [sys.executable, "-c", WINDOW_COMPILED, json.dumps(site)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == compiled


FIRST_PUSHES = """
import json, sys
import numpy as np
from numba.core import event
from streamlstm import formats
from streamlstm.daemon import config
from streamlstm.daemon.pipeline import make_detector

compiled = []


class Compiles(event.Listener):
    def on_start(self, ev):
        compiled.append(str(ev.data.get("dispatcher")))

    def on_end(self, ev):
        pass


event.register("numba:compile", Compiles())
site = config.load(sys.argv[1])
detector = make_detector(formats.load(site.model.path), site.detector)
rng = np.random.default_rng(0)
for ids in (["one"] * 9, [f"s{i}" for i in range(40)] * 12):  # a window; 40 sensors' windows
    detector.update(ids, rng.normal(size=(len(ids), 3)), np.arange(len(ids)) / 100.0)
print(json.dumps(compiled))
"""


@pytest.mark.slow
def test_warmup_of_a_window_site_leaves_its_first_pushes_nothing_to_compile(tmp_path):
    """A fresh cache: `warmup --config` compiles; then the daemon's first pushes (one
    sensor's first window, then many sensors' windows at once) compile nothing."""
    model = _window_classifier(tmp_path / "classes.npz")
    site = tmp_path / "site.toml"
    site.write_text(
        f'[model]\npath = "{model}"\n[[sources]]\ntype = "mqtt"\n'
        'topic = "sensors/{sensor}/accel"\n[[sinks]]\ntype = "stdout"\n'
    )
    cache = tmp_path / "numba"
    warmup = _cli("warmup", "--config", str(site), cache=cache)
    out, err = warmup.communicate(timeout=900)
    assert warmup.returncode == 0, err
    assert COMPILING_NOTICE in err and "kernels ready for random" in out
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(cache))
    done = subprocess.run(
        [sys.executable, "-c", FIRST_PUSHES, str(site)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_warmup_of_a_window_model_without_a_site_and_of_a_site_it_cannot_run(tmp_path):
    """`warmup --model` with a window model compiles its WindowBank's kernels (streams and
    banks refuse window models), even for an uncalibrated autoencoder; a site whose
    detector cannot be built is a clean error (exit 2), not a traceback."""
    import streamlstm as sl
    from streamlstm import formats

    model = _window_classifier(tmp_path / "classes.npz")
    proc = _cli("warmup", "--model", str(model))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "kernels ready for random (float32)" in out
    autoencoder = tmp_path / "ae.npz"
    formats.save(
        sl.random_model(3, [4], output_size=3, seed=4).replace(
            metadata={"window": {"length": 8, "hop": 4, "output": "every"}}
        ),
        autoencoder,
    )
    proc = _cli("warmup", "--model", str(autoencoder))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    site = tmp_path / "site.toml"
    site.write_text(f'[model]\npath = "{autoencoder}"\n')
    proc = _cli("warmup", "--config", str(site))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "streamlstm warmup: detector: " in err and "calibrate_reconstruction" in err
    assert "Traceback" not in err


def test_clear_cache_deletes_the_packages_cached_kernels_before_compiling(tmp_path):
    """``warmup --clear-cache`` deletes the package's kernels where Numba caches them (one
    folder per source folder, named after it and the SHA-1 of its path), then compiles."""
    import hashlib

    import streamlstm
    from streamlstm import _kernel_cache

    cache = tmp_path / "numba"
    _kernel_cache.refresh(cache_dir=str(cache))  # stamped: the import clears nothing itself
    kernels = Path(streamlstm.__file__).parent / "kernels"
    folder = cache / f"kernels_{hashlib.sha1(str(kernels).encode()).hexdigest()}"
    folder.mkdir(parents=True)
    planted = [folder / "_network.step-1.py311.nbi", folder / "_network.step-1.py311.1.nbc"]
    other = folder / "notes.txt"
    for path in (*planted, other):
        path.write_text("stale")
    proc = _cli("warmup", "--clear-cache", cache=cache)
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if COMPILING_NOTICE in line or not line:
                break
        assert "streamlstm warmup: deleted 2 cached kernel file(s)\n" in lines, lines
        assert not any(path.exists() for path in planted) and other.exists()
    finally:
        proc.send_signal(signal.SIGINT)  # the cold compile that follows is not needed here
        proc.wait(timeout=30)
