"""``streamlstm calibrate``: store residual statistics and a threshold measured on normal data."""

from __future__ import annotations

import argparse
import sys

from ..errors import StreamLSTMError
from .calibration import METRICS, calibrate
from .recordings import read_recording


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="weight file (any supported format)")
    parser.add_argument("--data", required=True, nargs="+",
                        help="normal recording(s), .csv or .npz; each is run from a fresh state")
    parser.add_argument("--out", required=True, help="calibrated model to write (native .npz)")
    parser.add_argument("--columns", help="comma-separated CSV columns / NPZ arrays to use, "
                        "in the model's channel order (default: the model's channel names "
                        "if the file has them, else every column)")
    parser.add_argument("--score", choices=("residual", "direct"), default="residual",
                        help="residual: the model predicts its next input; direct: its "
                        "output is an anomaly score (default: residual)")
    parser.add_argument("--metric", choices=METRICS, default=None,
                        help="residual metric (default: the model's, else diagonal)")
    parser.add_argument("--level", action=argparse.BooleanOptionalAction, default=None,
                        help="add the input's distance from its normal distribution to the "
                        "residual score (default: as the model's calibration, else off)")
    for name, kind, text in (
            ("quantile", float, "quantile of normal scores the threshold is based on"),
            ("margin", float, "threshold = quantile score x margin"),
            ("alpha", float, "EWMA weight of the newest score (1 = no smoothing)"),
            ("hysteresis", float, "alerts end below hysteresis x threshold"),
            ("debounce", int, "consecutive scores above threshold to start an alert"),
            ("quiet-time", float, "seconds below the end threshold to end an alert"),
            ("warmup", int, "model steps after a reset during which nothing alerts")):
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help=f"{text} (default: the model's calibration, else built-in)")


def run(args: argparse.Namespace) -> int:
    from ..formats import load, save

    try:
        model = load(args.model)
        wanted = args.columns.split(",") if args.columns else None
        recordings = []
        for path in args.data:
            columns = wanted
            if columns is None:
                # A feature model's channels name its features; the raw axes are these.
                named = (model.metadata.get("sample_channels") if "features" in model.metadata
                         else model.channels)
                columns = list(named) if named else None
            try:
                data, _ = read_recording(path, columns=columns)
            except StreamLSTMError:
                if args.columns or columns is None:
                    raise
                data, _ = read_recording(path)  # the file has no such names: take all
            recordings.append(data)
        previous = dict(model.calibration or {})
        options = {key: getattr(args, key) for key in
                   ("metric", "quantile", "margin", "alpha", "hysteresis", "debounce",
                    "quiet_time", "warmup")}
        for key, value in options.items():
            if value is None and key in previous:
                options[key] = previous[key]
        options = {k: v for k, v in options.items() if v is not None}
        options["level"] = ("level_center" in previous) if args.level is None else args.level
        if args.score == "direct":
            options.pop("metric", None)
            options.pop("level")
            options["score_index"] = int(previous.get("score_index", 0))
        calibrated = calibrate(model, recordings, score=args.score, **options)
        path = save(calibrated, args.out)
    except StreamLSTMError as exc:
        print(f"streamlstm calibrate: {exc}", file=sys.stderr)
        return 2
    cal = calibrated.calibration
    print(f"{path}: threshold {cal['threshold']:.6g} (quantile {cal['quantile']} of "
          f"{cal['samples']} normal samples = {cal['quantile_score']:.6g}, x {cal['margin']})")
    return 0
