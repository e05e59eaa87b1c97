"""``streamlstm warmup``: compile the kernels now, into Numba's on-disk cache, so that the
first ``streamlstm run`` (or a packager's first import) does not wait for them.

Also home of :func:`compile_interruptibly`, which every command that may compile uses: it
says so on stderr when Numba really compiles (not when it loads from its cache), and keeps
Ctrl-C working meanwhile.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from .. import _kernel_cache
from ..errors import ConfigError, StreamLSTMError

if TYPE_CHECKING:
    from ..model import Model

COMPILING_NOTICE = "compiling kernels (first run only)…"


def compile_interruptibly(
    work: Callable[[], None], *, prefix: str = "streamlstm", stream: IO[str] | None = None
) -> float:
    """Run ``work`` (calls that compile kernels) in a worker thread; return its seconds.

    Prints :data:`COMPILING_NOTICE` once, as soon as Numba starts compiling anything (a
    cache hit compiles nothing and prints nothing). The calling (main) thread waits in
    short joins, so Ctrl-C raises :class:`KeyboardInterrupt` here at once instead of after
    the compile; the worker is a daemon thread, abandoned when the process exits.
    """
    from numba.core import event

    out = stream if stream is not None else sys.stderr
    said = threading.Event()

    class _Notice(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            if not said.is_set():
                said.set()
                print(f"{prefix}: {COMPILING_NOTICE}", file=out, flush=True)

        def on_end(self, ev: event.Event) -> None:
            pass

    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting thread, re-raised there
            failure.append(exc)

    notice = _Notice()
    event.register("numba:compile", notice)
    started = time.monotonic()
    try:
        worker = threading.Thread(target=target, name="streamlstm-compile", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    finally:
        event.unregister("numba:compile", notice)
    if failure:
        raise failure[0]
    took = time.monotonic() - started
    if said.is_set():
        print(
            f"{prefix}: kernels compiled in {took:.1f} s (cached for the next run)",
            file=out,
            flush=True,
        )
    return took


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = """\
examples:
  streamlstm warmup                            every kernel, for the shipped default model
  streamlstm warmup --config site.toml         what that site's daemon uses (systemd ExecStartPre)
  streamlstm warmup --model fan.npz --dtype float32,float64
  streamlstm warmup --clear-cache              recompile everything

Kernels are cached per user: run it as the user (and with the NUMBA_CACHE_DIR) that will
run the daemon. Nothing is recompiled when the cache is warm.
"""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        "-c",
        metavar="SITE.toml",
        help="compile what this site's daemon uses (its model and detector)",
    )
    where.add_argument(
        "--model", metavar="FILE", help="weight file (default: the shipped default model)"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        metavar="DTYPES",
        help="comma-separated float32/float64 variants to compile (default: the model's own)",
    )
    parser.add_argument(
        "--clear-cache",
        action="store_true",
        help="first delete this package's cached kernels (they are also deleted on "
        "their own when a kernel source changes)",
    )


def _dtypes(text: str | None) -> list[str]:
    if not text:
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in ("float32", "float64")]
    if bad:
        raise ConfigError(f"--dtype: expected float32 and/or float64, got {', '.join(bad)}")
    return names


def _python_api(model: Model) -> None:
    """The kernels of ``Stream.step``/``Stream.run`` and ``Bank.step`` (in order, serial,
    parallel); for a window model those of ``WindowBank.push`` and ``evaluate_windows``,
    which are also the CPU ``WindowDetector``'s."""
    import numpy as np

    from .. import kernels
    from ..bank import PARALLEL_THRESHOLD

    if model.window is not None:
        count = model.window.length
        windows = model.windows(capacity=1)
        windows.push(["warm-up"] * count, np.zeros((count, model.input_size), model.dtype))
        return
    stream = model.stream(on_invalid="skip")
    sample = np.zeros((2, model.input_size), model.dtype)
    stream.step(sample[0])
    stream.run(sample)
    bank = model.bank(capacity=PARALLEL_THRESHOLD)
    # One sensor (stepped in order), a tile's worth (serial, tiled), many (parallel).
    for count in (1, kernels.TILE_STREAMS, PARALLEL_THRESHOLD):
        bank.step(list(range(count)), np.zeros((count, model.input_size), model.dtype))


def run(args: argparse.Namespace) -> int:
    from ..daemon import config as config_module
    from ..daemon.pipeline import compile_kernels, load_model

    try:
        config = config_module.load(args.config)
        loaded = load_model(args.model if args.model else config.model.path)
        dtypes = _dtypes(args.dtype) or [loaded.model.dtype.name]
    except StreamLSTMError as exc:
        print(f"streamlstm warmup: {exc}", file=sys.stderr)
        return 2
    models = [loaded.model.astype(dtype) for dtype in dtypes]
    if args.clear_cache:
        deleted = _kernel_cache.clear()
        print(f"streamlstm warmup: deleted {deleted} cached kernel file(s)", file=sys.stderr)

    def work() -> None:
        for model in models:
            # Without a site, a window model's detector may need a calibration it lacks;
            # its Python API runs the CPU WindowDetector's kernels anyway.
            if args.config is not None or model.window is None:
                compile_kernels(model, config)
            if args.config is None:
                _python_api(model)

    try:
        took = compile_interruptibly(work, prefix="streamlstm warmup")
    except StreamLSTMError as exc:
        print(f"streamlstm warmup: {exc}", file=sys.stderr)
        return 2
    print(
        f"streamlstm warmup: kernels ready for {loaded.model_id} "
        f"({', '.join(dtypes)}) in {took:.1f} s"
    )
    return 0
