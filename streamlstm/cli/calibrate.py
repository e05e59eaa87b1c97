"""``streamlstm calibrate``: store residual statistics and a threshold measured on normal data.

A next-step predictor is scored by its residuals (or, ``--score direct``, by one of its
outputs); a window autoencoder (window output ``every``) by the reconstruction error of
each window (:func:`~streamlstm.detect.calibration.calibrate_reconstruction`). A window
classifier needs no calibration: its alerts come from its class probabilities.
"""

from __future__ import annotations

import argparse
import sys

from ..detect.calibration import (
    METRICS,
    PREDICTOR_OPTIONS,
    CalibrationOptions,
    calibrate,
    calibrate_reconstruction,
)
from ..detect.calibration_record import LEVEL_FITS, POOLS, TARGETS
from ..detect.durations import add_duration_arguments, duration_arguments
from ..detect.recordings import read_recording
from ..errors import ConfigError, ShapeError, StreamLSTMError
from ..model import Model

_DEFAULTS = CalibrationOptions()

DESCRIPTION = """\
calibrate a model on normal data: the score's centre and whitening, the channels never
scored, and the threshold for a false-alarm budget, stored in the model's calibration.

A next-step predictor is scored by its residuals (or --score direct: by one output). A
window autoencoder (a window model with output 'every') is scored once per window by the
whitened reconstruction error of the window; --warmup and --debounce then count windows,
and the predictor-only options (--score, --target, --level, --score-index) do not apply.
A window classifier needs no calibration (its alerts come from its class probabilities)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--model", required=True, help="weight file (any supported format)")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="normal recording(s), .csv or .npz; each is run from a fresh state",
    )
    parser.add_argument("--out", required=True, help="calibrated model to write (native .npz)")
    parser.add_argument(
        "--columns",
        help="comma-separated CSV columns / NPZ arrays to use, "
        "in the model's channel order (default: the model's channel names "
        "if the file has them, else every column)",
    )
    # Every default below is None: unset options come from the model's previous
    # calibration, else CalibrationOptions' defaults, exactly as in Python's calibrate().
    parser.add_argument(
        "--score",
        choices=("residual", "direct"),
        default=None,
        help="residual: the model predicts its next input; direct: its "
        f"output is an anomaly score (default: {_DEFAULTS.score})",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default=None,
        help=f"residual metric (default: {_DEFAULTS.metric})",
    )
    parser.add_argument(
        "--pool",
        choices=POOLS,
        default=None,
        help="pool the whitened components by their root mean square or "
        f"their largest one (default: {_DEFAULTS.pool})",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=None,
        help="what a residual model predicts: the next input (level) or its "
        f"change (delta) (default: as trained, else {_DEFAULTS.target})",
    )
    parser.add_argument(
        "--level",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the input's distance from its normal distribution to the "
        "residual score (default: off)",
    )
    parser.add_argument(
        "--level-balance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --level and --pool max: scale the level term so that its own budget "
        "score equals the residual's (each read against its own normal tail; default: off)",
    )
    parser.add_argument(
        "--level-fit",
        choices=LEVEL_FITS,
        default=None,
        help="with --level: read the level term's tail on the data it was fitted to "
        "(pooled) or each third of the data against the other two (cross: levels that "
        "wander within the normal data widen it; default: as stored, else pooled)",
    )
    parser.add_argument(
        "--mask",
        help="comma-separated channels never scored (default: "
        "learned: channels missing or constant in the normal data)",
    )
    for name, kind, text in (
        (
            "false-alarms-per-day",
            float,
            "false-alarm budget the threshold is set for (needs the model's sample rate)",
        ),
        (
            "quantile",
            float,
            "instead of a budget: the threshold is this quantile of the normal scores",
        ),
        ("margin", float, "threshold = budget score x margin (residual scale)"),
        ("alpha", float, "EWMA weight of the newest score (1 = no smoothing)"),
        (
            "hysteresis",
            float,
            "alerts end below baseline + hysteresis x (threshold - "
            "baseline), baseline = the median normal score",
        ),
        (
            "level-alpha",
            float,
            "with --level: EWMA weight per step with which the level "
            "centre follows the input while no alert is open (0: no drift adaptation)",
        ),
        (
            "level-bound",
            float,
            "with --level-alpha: how far the level centre may move, in normal standard deviations",
        ),
        ("score-index", int, "direct models: which output is the score"),
    ):
        default = getattr(_DEFAULTS, name.replace("-", "_"))
        parser.add_argument(
            f"--{name}",
            type=kind,
            default=None,
            help=f"{text} (default: the model's calibration, else {default})",
        )
    add_duration_arguments(parser, _DEFAULTS, step_note=" (windows, for a window autoencoder)")


def _columns_hint(path: str, names: list[str], width: int, wanted: list[str] | None) -> str:
    """The error for a recording whose columns do not match the model's inputs."""
    takes = f"{width} ({', '.join(wanted)})" if wanted else str(width)
    return (
        f"{path} has {len(names)} columns ({', '.join(names)}) but the model takes "
        f"{takes} inputs; name the {width} to use, in order, with --columns NAME,NAME,..."
    )


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
                named = (
                    model.metadata.get("sample_channels")
                    if "features" in model.metadata
                    else model.channels
                )
                columns = list(named) if named else None
            try:
                data, names = read_recording(path, columns=columns)
            except StreamLSTMError:
                if args.columns or columns is None:
                    raise
                data, names = read_recording(path)  # the file has no such names: take all
            width = len(columns) if columns else model.input_size
            if not args.columns and data.shape[1] != width:
                raise ShapeError(_columns_hint(path, names, width, columns))
            recordings.append(data)
        options = {
            key: getattr(args, key)
            for key in (
                "score",
                "metric",
                "pool",
                "target",
                "level",
                "false_alarms_per_day",
                "quantile",
                "margin",
                "alpha",
                "hysteresis",
                "level_alpha",
                "level_bound",
                "level_balance",
                "level_fit",
                "score_index",
            )
        }
        options.update(duration_arguments(args, "streamlstm calibrate"))
        if args.mask is not None:
            options["mask"] = tuple(args.mask.split(",")) if args.mask else ()
        if model.window is None:
            calibrated = calibrate(model, recordings, **options)
        else:
            calibrated = _calibrate_window_model(model, recordings, options)
        path = save(calibrated, args.out)
    except StreamLSTMError as exc:
        print(f"streamlstm calibrate: {exc}", file=sys.stderr)
        return 2
    cal = calibrated.calibration
    assert cal is not None  # calibrate and calibrate_reconstruction always set one
    budget = (
        f"{cal['false_alarms_per_day']:g} false alarms/day"
        if cal.get("false_alarms_per_day")
        else f"quantile {cal['quantile']}"
    )
    masked = f", masked: {', '.join(cal['mask_names'])}" if cal.get("mask_names") else ""
    scores = "window reconstruction" if cal["score"] == "reconstruction" else "normal"
    print(
        f"{path}: threshold {cal['threshold']:.6g} ({budget}: score {cal['quantile_score']:.6g}"
        f" from {cal['scores']} {scores} scores, {cal['tail']} tail, x {cal['margin']}"
        f"{masked})"
    )
    return 0


def _calibrate_window_model(model: Model, recordings: list, options: dict) -> Model:
    """A window autoencoder's reconstruction calibration; a clear error for anything else."""
    spec = model.window
    assert spec is not None
    if not spec.per_step:
        raise ConfigError(
            f"model {model.name!r} is a window classifier ({spec.describe()}): "
            "its alerts come from its class probabilities (normal_class, "
            "min_probability, consecutive in the site config), so there is "
            "nothing to calibrate"
        )
    given = [name for name in PREDICTOR_OPTIONS if options.get(name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(
            f"{flags}: only for next-step predictors; model {model.name!r} is a "
            f"window autoencoder ({spec.describe()}), scored by its "
            "reconstruction error"
        )
    return calibrate_reconstruction(
        model, recordings, **{k: v for k, v in options.items() if k not in PREDICTOR_OPTIONS}
    )
