"""``streamlstm step MODEL [--input FILE.csv]``: stream CSV samples through a model.

Each input line is one sample: ``D`` comma-separated numbers in sensor units. Each sample
line prints one line of ``O`` comma-separated predictions, as soon as it is computed (so
the command works at the end of a live pipe), and output line ``k`` always belongs to
sample line ``k``. A bad line (wrong field count, not a number, NaN/Inf) is reported on
stderr with its line number and prints a row of ``nan``; the stream's state is untouched by
it. Blank lines and lines starting with ``#`` are ignored and print nothing.

Exit codes: 0 when the input was consumed, 2 for a usage error or a model that cannot be
loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import numpy as np

from .errors import InvalidSampleError, StreamLSTMError
from .formats import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="weight file (.npz, .safetensors, .pt, .pth, ...)")
    parser.add_argument("--input", "-i", metavar="FILE.csv",
                        help="samples, one per line (default: stdin)")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="loader option, e.g. head_activation=relu or input_mean=[0,0,1] "
                             "(VALUE is JSON if it parses as JSON, else a string); repeatable")
    parser.add_argument("--dtype", choices=("float32", "float64"),
                        help="run in this precision (default: the file's)")


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
            step_lines(model, source, sys.stdout, sys.stderr)
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
            print(f"line {number}: expected {width} values, got {len(fields)}; skipped",
                  file=err)
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
