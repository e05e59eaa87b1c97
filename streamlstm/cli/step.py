"""``streamlstm step MODEL [--input FILE.csv]``: stream CSV samples through a model.

Each input line is one sample: ``D`` comma-separated numbers in sensor units. Each sample
line prints one line of ``O`` comma-separated predictions, as soon as it is computed (so
the command works at the end of a live pipe), and output line ``k`` always belongs to
sample line ``k``. A bad line (wrong field count, not a number, NaN/Inf) is reported on
stderr with its line number and prints a row of ``nan``; the stream's state is untouched by
it. Blank lines and lines starting with ``#`` are ignored and print nothing.

A window model (:mod:`streamlstm.windows`) prints one line per completed window instead,
as soon as its last sample is read: the index (from 0) of that last sample line, then the
window's outputs (for output ``every``, its ``W x O`` outputs step by step). A bad line is
reported as above and counts as a rejected sample: the windows that hold it are skipped,
and their number is printed on stderr at the end.

Exit codes: 0 when the input was consumed, 2 for a usage error or a model that cannot be
loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import numpy as np

from ..errors import InvalidSampleError, StreamLSTMError
from ..formats import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = """\
output: one line of predictions per sample line (a row of nan for a bad line).
A window model prints one line per completed window instead: the index (from 0) of its
last sample line, then its outputs (output 'every': W x O values, step by step); the
windows holding a bad line are skipped and counted on stderr."""
    parser.add_argument("model", help="weight file (.npz, .safetensors, .pt, .pth, ...)")
    parser.add_argument(
        "--input", "-i", metavar="FILE.csv", help="samples, one per line (default: stdin)"
    )
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option, e.g. head_activation=relu or input_mean=[0,0,1] "
        "(VALUE is JSON if it parses as JSON, else a string); repeatable",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="run in this precision (default: the file's)",
    )


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    """``["k=v", ...]`` to loader keyword arguments; ``v`` is JSON when it parses as JSON."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options


def run(args: argparse.Namespace) -> int:
    try:
        options = parse_options(args.option)
        model = load(args.model, **options)
        if args.dtype:
            model = model.astype(args.dtype)
        if model.window is None:
            model.check_streamable()
    except (StreamLSTMError, ValueError, TypeError) as exc:
        print(f"streamlstm step: {exc}", file=sys.stderr)
        return 2
    try:
        # Closed below; an error opening it is a usage error, not one while streaming.
        source = sys.stdin if args.input is None else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"streamlstm step: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        with source:
            if model.window is None:
                step_lines(model, source, sys.stdout, sys.stderr)
            else:
                counts = window_lines(model, source, sys.stdout, sys.stderr)
                if counts.skipped or counts.failed:
                    print(
                        f"streamlstm step: {counts.skipped} window(s) skipped (they held a "
                        f"rejected sample), {counts.failed} left out (evaluation overflowed "
                        "to NaN/Inf)",
                        file=sys.stderr,
                    )
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other filters do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - absorbs the interpreter's final flush
    return 0


def step_lines(model: Any, lines: Iterable[str], out: TextIO, err: TextIO) -> tuple[int, int]:
    """Step ``model`` over CSV ``lines``; return ``(samples stepped, lines rejected)``."""
    stream = model.stream(on_invalid="raise")
    width = model.input_size
    sample = np.empty(width, model.dtype)
    prediction = np.empty(model.output_size, model.dtype)
    # Enough digits to round-trip the model's precision.
    spec = ".9g" if model.dtype == np.float32 else ".17g"
    rejected_row = ",".join(["nan"] * model.output_size) + "\n"
    stepped = rejected = 0
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split(",")
        if len(fields) != width:
            print(f"line {number}: expected {width} values, got {len(fields)}; skipped", file=err)
            rejected += 1
            out.write(rejected_row)
            continue
        try:
            sample[:] = [float(f) for f in fields]
            stream.step(sample, out=prediction)
        except ValueError as exc:
            reason = str(exc) if isinstance(exc, InvalidSampleError) else f"not a number ({exc})"
            print(f"line {number}: {reason}; skipped", file=err)
            rejected += 1
            out.write(rejected_row)
            continue
        out.write(",".join(format(v, spec) for v in prediction.tolist()) + "\n")
        out.flush()
        stepped += 1
    return stepped, rejected


@dataclasses.dataclass
class WindowCounts:
    """What :func:`window_lines` did: sample lines read, lines rejected, windows printed,
    windows skipped (they held a rejected sample) and failed (overflowed to NaN/Inf)."""

    samples: int = 0
    rejected: int = 0
    windows: int = 0
    skipped: int = 0
    failed: int = 0


def window_lines(model: Any, lines: Iterable[str], out: TextIO, err: TextIO) -> WindowCounts:
    """Run window model ``model`` over CSV ``lines``, one output line per completed window
    (see the module doc)."""
    bank = model.windows(capacity=1, threads=1)
    width = model.input_size
    sample = np.empty((1, width), model.dtype)
    spec = ".9g" if model.dtype == np.float32 else ".17g"
    sensor = ["input"]
    counts = WindowCounts()
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        reason = None
        fields = text.split(",")
        if len(fields) != width:
            reason = f"expected {width} values, got {len(fields)}"
        else:
            try:
                sample[0] = [float(f) for f in fields]
            except ValueError as exc:
                reason = f"not a number ({exc})"
            else:
                if not np.isfinite(sample).all():
                    reason = "sample holds NaN or Inf"
        if reason is not None:
            print(f"line {number}: {reason}; skipped, and the windows that hold it", file=err)
            sample[0] = np.nan  # still a sample: later windows keep their place
            counts.rejected += 1
        result = bank.push(sensor, sample)
        counts.samples += 1
        counts.skipped += result.skipped
        counts.failed += result.failed
        if result.failed:
            print(
                f"line {number}: the window ending here overflowed to NaN/Inf; left out", file=err
            )
        for end, values in zip(result.end_index.tolist(), result.values, strict=True):
            out.write(f"{end}," + ",".join(format(v, spec) for v in values.ravel().tolist()) + "\n")
            counts.windows += 1
        if len(result):
            out.flush()
    return counts
