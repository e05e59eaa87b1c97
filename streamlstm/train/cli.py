"""``streamlstm train``: fit a next-step LSTM predictor on normal data (needs torch)."""

from __future__ import annotations

import argparse
import sys

from ..errors import StreamLSTMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, nargs="+",
                        help="normal recording(s), .csv or .npz; never spliced together")
    parser.add_argument("--out", required=True, help="model file to write (native .npz)")
    parser.add_argument("--columns", help="comma-separated CSV columns / NPZ arrays to use")
    parser.add_argument("--name", default=None, help="model name (default: the output stem)")
    parser.add_argument("--sample-rate", type=float, default=None, help="samples per second")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="held-out tail of each recording for early stopping and calibration")
    parser.add_argument("--windows-per-epoch", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", metavar="WINDOW:HOP[:STAT,...]",
                        help="train on windowed features of the raw samples, e.g. "
                        "1024:128:log_rms,crest,kurtosis (for kHz vibration)")
    parser.add_argument("--metric", choices=("diagonal", "mahalanobis"), default="diagonal")
    for name, kind in (("quantile", float), ("margin", float), ("alpha", float),
                       ("hysteresis", float), ("debounce", int), ("quiet-time", float),
                       ("warmup", int)):
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help="calibration/alert parameter (see streamlstm calibrate)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


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
        print("streamlstm train: needs PyTorch; install the extra: "
              "pip install 'streamlstm[train]'", file=sys.stderr)
        return 2
    from ..detect.recordings import read_recording
    from ..formats import save
    from .recipe import train

    try:
        columns = args.columns.split(",") if args.columns else None
        recordings, names = [], []
        for path in args.data:
            data, names = read_recording(path, columns=columns)
            recordings.append(data)
        calibration = {key: getattr(args, key) for key in
                       ("quantile", "margin", "alpha", "hysteresis", "debounce", "quiet_time",
                        "warmup") if getattr(args, key) is not None}
        calibration["metric"] = args.metric
        result = train(recordings, hidden=args.hidden, layers=args.layers, epochs=args.epochs,
                       seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                       patience=args.patience, val_fraction=args.val_fraction,
                       windows_per_epoch=args.windows_per_epoch, seed=args.seed,
                       features=_features(args.features), channels=names,
                       name=args.name or Path(args.out).stem, sample_rate=args.sample_rate,
                       calibration=calibration, progress=not args.quiet)
        path = save(result.model, args.out)
    except (StreamLSTMError, ValueError) as exc:
        print(f"streamlstm train: {exc}", file=sys.stderr)
        return 2
    cal = result.model.calibration
    print(f"{path}: {result.model.describe()}, best epoch {result.best_epoch} of "
          f"{len(result.history)}, held-out mse {result.history[result.best_epoch - 1][2]:.4g}, "
          f"threshold {cal['threshold']:.6g}, {result.seconds:.1f} s")
    return 0
