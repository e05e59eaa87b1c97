"""``streamlstm train``: fit a next-step LSTM predictor on normal data (needs torch)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import StreamLSTMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..detect.calibration import CalibrationOptions
    from ..detect.calibration_record import POOLS
    from ..detect.durations import add_duration_arguments

    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="normal recording(s), .csv or .npz; never spliced together",
    )
    parser.add_argument("--out", required=True, help="model file to write (native .npz)")
    parser.add_argument("--columns", help="comma-separated CSV columns / NPZ arrays to use")
    parser.add_argument("--name", default=None, help="model name (default: the output stem)")
    parser.add_argument(
        "--sample-rate",
        type=float,
        default=None,
        metavar="HZ",
        help="samples per second, stored in the model",
    )
    parser.add_argument(
        "--hidden", type=int, default=32, metavar="UNITS", help="LSTM units per layer"
    )
    parser.add_argument("--layers", type=int, default=1, help="stacked LSTM layers")
    parser.add_argument(
        "--target",
        choices=("delta", "level"),
        default="delta",
        help="predict the next change (delta) or the next value (level)",
    )
    parser.add_argument(
        "--folds", type=int, default=3, help="k of the k-fold early stopping and calibration"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="most training epochs (fewer if early stopping ends it)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=32,
        metavar="STEPS",
        help="steps per training window (truncated backpropagation)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="windows per batch")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="early stopping: epochs without a better held-out loss",
    )
    parser.add_argument(
        "--windows-per-epoch", type=int, default=256, help="training windows drawn per epoch"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="random seed (reproducible runs)")
    parser.add_argument(
        "--features",
        metavar="WINDOW:HOP[:STAT,...]",
        help="train on windowed features of the raw samples, e.g. "
        "1024:128:log_rms,crest,kurtosis (for kHz vibration)",
    )
    parser.add_argument(
        "--metric",
        choices=("diagonal", "mahalanobis"),
        default=None,
        help="residual metric (see streamlstm calibrate)",
    )
    parser.add_argument(
        "--pool",
        choices=POOLS,
        default=None,
        help="pool the whitened components by their RMS or their largest "
        "one (see streamlstm calibrate)",
    )
    for name, kind in (
        ("false-alarms-per-day", float),
        ("quantile", float),
        ("margin", float),
        ("alpha", float),
        ("hysteresis", float),
    ):
        parser.add_argument(
            f"--{name}",
            type=kind,
            default=None,
            help="calibration/alert parameter (see streamlstm calibrate)",
        )
    add_duration_arguments(parser, CalibrationOptions(), from_model=False)
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (default: progress when it is a terminal)",
    )


def _features(text: str | None) -> dict | None:
    if not text:
        return None
    parts = text.split(":")
    spec: dict = {"window": int(parts[0]), "hop": int(parts[1])}
    if len(parts) > 2:
        spec["stats"] = parts[2].split(",")
    return spec


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        print(
            "streamlstm train: needs PyTorch; install the extra: pip install 'streamlstm[train]'",
            file=sys.stderr,
        )
        return 2
    from ..detect.durations import duration_arguments
    from ..detect.recordings import read_recording
    from ..formats import save
    from ..train.recipe import train

    try:
        columns = args.columns.split(",") if args.columns else None
        recordings: list[Any] = []
        names: list[str] = []
        for path in args.data:
            data, names = read_recording(path, columns=columns)
            recordings.append(data)
        calibration = {
            key: getattr(args, key)
            for key in (
                "metric",
                "pool",
                "false_alarms_per_day",
                "quantile",
                "margin",
                "alpha",
                "hysteresis",
            )
            if getattr(args, key) is not None
        }
        calibration.update(duration_arguments(args, "streamlstm train"))
        result = train(
            recordings,
            hidden=args.hidden,
            layers=args.layers,
            target=args.target,
            folds=args.folds,
            epochs=args.epochs,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            windows_per_epoch=args.windows_per_epoch,
            threads=args.threads,
            seed=args.seed,
            features=_features(args.features),
            channels=names,
            name=args.name or Path(args.out).stem,
            sample_rate=args.sample_rate,
            calibration=calibration,
            progress=False if args.quiet else None,
        )
        path = save(result.model, args.out)
    except (StreamLSTMError, ValueError) as exc:
        print(f"streamlstm train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "streamlstm train: interrupted before a model could be kept; nothing saved",
            file=sys.stderr,
        )
        return 130
    cal = result.model.calibration
    assert cal is not None  # train() always calibrates
    stopped = " (interrupted: best model so far)" if result.interrupted else ""
    print(
        f"{path}: {result.model.describe()}, {result.epochs} epochs (folds' best "
        f"{result.best_epochs}), threshold {cal['threshold']:.6g}, "
        f"{result.seconds:.1f} s{stopped}"
    )
    return 0
