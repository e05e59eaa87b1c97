"""Train a next-step LSTM predictor on normal data, calibrate it, return a native Model.

The recipe (v2):

* Channels that are dead (missing in more than 10 % of rows) or constant in the normal
  data are masked: fed their mean, never scored; other missing values are carried
  forward (:func:`streamlstm.detect.calibration.cleaned`).
* Optionally raw kHz samples become windowed features (:mod:`streamlstm.detect.features`).
* Inputs are normalised by the training data's mean and standard deviation. The target
  is the next step's **change** (``target="delta"``, the default: the model predicts
  ``x[t+1] - x[t]``, normalised by the changes' spread, and the detector adds ``x[t]``
  back), so a level never seen in training moves the prediction with it instead of being
  pulled back to a remembered one; ``target="level"`` predicts ``x[t+1]`` itself.
* The score is the largest whitened residual component (``pool="max"``): a fault that
  shows in one channel of many is not averaged away by the others. No level term by
  default: the input's distance from its calibrated normal distribution
  (``calibration={"level": True}``) latches on any level the calibration never saw, a
  new occasion of the same well or drift, while a delta predictor sees a persistent
  shift only at its onset. Pass ``level=True`` when the absolute level is the anomaly and
  the normal level does not move (one machine at one operating point; a fault already
  present at a sensor's first sample is seen only this way). These defaults were chosen
  on the validation parts of ``benchmarks/bench_quality.py`` (five datasets, 3W's
  cross-occasion cases included; the delta target and the level term in earlier runs).
* k-fold cross-fitting (``folds``, default 3): every recording is cut into ``folds``
  contiguous blocks; fold ``k``'s model trains on the other blocks (each piece its own
  recording, never spliced), stops early on block ``k`` (keeping its best epoch; a
  :class:`TrainingWarning` when that is the first) and scores it. The threshold comes
  from those out-of-sample scores of all the data. The final model trains on **all**
  rows for the median best epoch.
* An epoch is ``windows_per_epoch`` windows of ``seq_len`` steps drawn from every
  possible start (the last rows included), so its cost does not grow with the data.

Reproducible: every random choice comes from ``seed``, with torch's deterministic
algorithms on and ``threads`` torch threads (default 1: small LSTMs are slower with
more); torch's global thread count, deterministic-algorithms flag and random state are
restored afterwards. Ctrl-C stops training and returns the best model so far, calibrated
(``TrainResult.interrupted``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..detect.calibration import CalibrationOptions, calibrate_cross_fitted, channel_mask, cleaned
from ..detect.durations import resolve_durations, with_units
from ..detect.features import FeatureSpec, compute_features, feature_names
from ..errors import ConfigError, ShapeError
from ..model import Model, Normalization, dense_layer, lstm_layer
from .progress import Progress, bar

#: A held-out block's first steps start from a zero state; leave them out of its loss.
VAL_BURN_IN = 10
TARGETS = ("delta", "level")
#: The recipe's calibration defaults, chosen on validation data (see the module doc);
#: ``calibration=`` entries override them.
DEFAULT_CALIBRATION = {"level": False, "pool": "max"}


class TrainingWarning(UserWarning):
    """Training found nothing better than its first epoch (or was cut short)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The trained, calibrated model and each fold's loss history ``[(epoch, train,
    held-out), ...]`` (mean squared error in normalised target units); ``best_epochs``
    are the folds' best epochs and ``epochs`` the count the final model trained for."""

    model: Model
    histories: list[list[tuple[int, float, float]]]
    best_epochs: list[int]
    epochs: int
    seconds: float
    interrupted: bool = False


@dataclasses.dataclass(frozen=True)
class _Fit:
    """One fitted network and how it went."""

    state: dict[str, torch.Tensor]
    history: list[tuple[int, float, float]]
    best_epoch: int
    interrupted: bool


class _Predictor(torch.nn.Module):
    def __init__(self, width: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(width, hidden, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


@contextlib.contextmanager
def torch_state(threads: int, seed: int) -> Iterator[torch.Generator]:
    """Seeded, deterministic, ``threads``-thread torch inside; the caller's global torch
    settings (threads, deterministic algorithms, random state) restored after."""
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_rng_state(),
    )
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.set_rng_state(saved[3])


def best_epoch(held_out: Sequence[float], patience: int) -> tuple[int, bool]:
    """The 1-based epoch with the lowest held-out loss among those run, and whether
    training should stop after the last one (``patience`` epochs without improvement)."""
    best = min(range(len(held_out)), key=lambda i: (held_out[i], i))
    return best + 1, len(held_out) - (best + 1) >= patience


def _as_recordings(data: Any) -> list[np.ndarray]:
    items = [data] if isinstance(data, np.ndarray) else list(data)
    out = []
    for index, item in enumerate(items):
        array = np.asarray(item, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] == 0:
            raise ShapeError(f"recording {index}: expected (T, D), got shape {array.shape}")
        if np.any(np.isinf(array)):
            raise ShapeError(f"recording {index}: holds Inf; train on clean normal data")
        out.append(array)
    if not out or len({a.shape[1] for a in out}) != 1:
        raise ShapeError("training needs one or more recordings with the same channel count")
    return out


def _blocks(rec: np.ndarray, folds: int, minimum: int, index: int) -> list[np.ndarray]:
    edges = np.linspace(0, rec.shape[0], folds + 1).round().astype(int)
    if np.min(np.diff(edges)) < minimum:
        raise ShapeError(
            f"recording {index}: {rec.shape[0]} samples is too short to cut "
            f"into {folds} folds of >= {minimum} samples (give more data or "
            "fewer folds)"
        )
    return [rec[a:b] for a, b in itertools.pairwise(edges)]


class _Data:
    """Normalised training tensors for one set of recordings (never spliced)."""

    def __init__(
        self,
        parts: list[np.ndarray],
        mean: np.ndarray,
        std: np.ndarray,
        target_mean: np.ndarray,
        target_std: np.ndarray,
        delta: bool,
        window: int,
    ) -> None:
        inputs, targets, starts, offset = [], [], [], 0
        for part in parts:
            x = (part - mean) / std
            y = (np.diff(part, axis=0) - target_mean) / target_std if delta else x[1:]
            inputs.append(x[:-1])
            targets.append(y)
            n = part.shape[0] - 1
            if n >= window:
                first = np.arange(0, n - window + 1)
                starts.append(offset + first)
            offset += n
        self.x = torch.from_numpy(np.concatenate(inputs).astype(np.float32))
        self.y = torch.from_numpy(np.concatenate(targets).astype(np.float32))
        self.starts = torch.from_numpy(np.concatenate(starts)) if starts else None
        self.pieces = [
            (
                torch.from_numpy(((p[:-1] - mean) / std).astype(np.float32))[None],
                torch.from_numpy(
                    (
                        (np.diff(p, axis=0) - target_mean) / target_std
                        if delta
                        else (p[1:] - mean) / std
                    ).astype(np.float32)
                )[None],
            )
            for p in parts
        ]


def _fit(
    train: _Data,
    held_out: _Data | None,
    width: int,
    hidden: int,
    layers: int,
    epochs: int,
    patience: int,
    lr: float,
    batch_size: int,
    windows_per_epoch: int,
    window: int,
    generator: torch.Generator,
    show: Progress,
    label: str,
) -> _Fit:
    net = _Predictor(width, hidden, layers)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    span = torch.arange(window)
    history: list[tuple[int, float, float]] = []
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    best, interrupted = 1, False
    starts = train.starts
    assert starts is not None  # the caller fits only on data that has windows
    try:
        for epoch in range(1, epochs + 1):
            net.train()
            count_starts = len(starts)
            passes = -(-windows_per_epoch // count_starts)
            picks = torch.cat(
                [torch.randperm(count_starts, generator=generator) for _ in range(passes)]
            )[:windows_per_epoch]
            order = starts[picks]
            total, count = 0.0, 0
            for first in range(0, len(order), batch_size):
                index = order[first : first + batch_size, None] + span
                loss = torch.nn.functional.mse_loss(net(train.x[index]), train.y[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * index.shape[0]
                count += index.shape[0]
                show.update(
                    f"{label} epoch {epoch}/{epochs} {bar(count, len(order))} "
                    f"loss {total / count:.4f}"
                )
            held = total / count if held_out is None else _held_out_loss(net, held_out)
            history.append((epoch, total / count, held))
            show.done(
                f"{label} epoch {epoch}/{epochs}: train {total / count:.4f}"
                + ("" if held_out is None else f"  held-out {held:.4f}")
            )
            if held_out is None:
                best = epoch
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
                continue
            best, stop = best_epoch([h[2] for h in history], patience)
            if best == epoch:
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            if stop:
                break
    except KeyboardInterrupt:
        interrupted = True
    return _Fit(best_state, history, best, interrupted)


def _held_out_loss(net: _Predictor, held_out: _Data) -> float:
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in held_out.pieces:
            burn = min(VAL_BURN_IN, x.shape[1] // 4)
            total += float(
                torch.nn.functional.mse_loss(net(x)[:, burn:], y[:, burn:], reduction="sum")
            )
            count += (x.shape[1] - burn) * x.shape[2]
    return total / max(count, 1)


def _export(
    state: Mapping[str, torch.Tensor],
    layers: int,
    norm_in: Normalization,
    norm_out: Normalization,
    **fields: Any,
) -> Model:
    sd = {k: v.detach().cpu().numpy() for k, v in state.items()}
    recurrent = tuple(
        lstm_layer(
            sd[f"lstm.weight_ih_l{k}"],
            sd[f"lstm.weight_hh_l{k}"],
            sd[f"lstm.bias_ih_l{k}"],
            sd[f"lstm.bias_hh_l{k}"],
        )
        for k in range(layers)
    )
    return Model(
        layers=recurrent,
        head=(dense_layer(sd["head.weight"], sd["head.bias"]),),
        input_norm=norm_in,
        output_norm=norm_out,
        **fields,
    )


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = values.mean(axis=0), values.std(axis=0)
    # A constant channel carries no information; std 1 keeps it at 0 instead of 0/0.
    return mean, np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)


def train(
    data: Any,
    *,
    hidden: int = 32,
    layers: int = 1,
    features: Any = None,
    target: str = "delta",
    folds: int = 3,
    seq_len: int = 32,
    batch_size: int = 32,
    epochs: int = 40,
    lr: float = 3e-3,
    patience: int = 5,
    windows_per_epoch: int = 256,
    threads: int = 1,
    seed: int = 0,
    name: str = "model",
    channels: Sequence[str] = (),
    sample_rate: float | None = None,
    calibration: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train and calibrate a next-step predictor on normal ``data`` (see the module doc).

    ``data``: a ``(T, D)`` array in sensor units (NaN = missing), or a sequence of them
    (separate recordings, never spliced). ``features``: a :class:`FeatureSpec` or its
    dict (window, hop, stats) to train on windowed features of raw high-rate samples.
    ``target``: ``"delta"`` or ``"level"``. ``folds``: k of the k-fold calibration (>= 2).
    ``calibration``: options for :func:`streamlstm.detect.calibrate` (false_alarms_per_day,
    margin, alpha, pool, debounce_steps, quiet_s, mask, ...; durations named with their unit,
    see :mod:`streamlstm.detect.durations`); a false-alarm budget needs ``sample_rate``.
    ``progress``: progress lines on stderr (default: only when stderr is a terminal).
    Returns a :class:`TrainResult`; save its ``model`` with :func:`streamlstm.formats.save`.
    """
    if not (
        hidden >= 1
        and layers >= 1
        and seq_len >= 2
        and batch_size >= 1
        and epochs >= 1
        and patience >= 1
        and windows_per_epoch >= 1
        and folds >= 2
        and lr > 0
        and threads >= 1
    ):
        raise ConfigError(
            "train: hidden, layers, batch_size, epochs, patience, threads and "
            "windows_per_epoch must be >= 1, seq_len and folds >= 2, lr > 0"
        )
    if target not in TARGETS:
        raise ConfigError(f"train: target must be one of {TARGETS}, got {target!r}")
    started = time.monotonic()
    spec = None
    if features is not None:
        spec = (
            features
            if isinstance(features, FeatureSpec)
            else FeatureSpec.from_metadata({"features": features})
        )
    raw = _as_recordings(data)
    axes = raw[0].shape[1]
    if channels and len(channels) != axes:
        raise ConfigError(f"train: {len(channels)} channel names for {axes} channels")
    input_channels = tuple(channels) or tuple(f"c{k}" for k in range(axes))
    # Durations resolved once (a deprecated name warns here, at the caller), then passed
    # on with their units.
    period = (spec.hop if spec else 1) / sample_rate if sample_rate else None
    options = with_units(
        resolve_durations({**DEFAULT_CALIBRATION, **(calibration or {})}, period, stacklevel=2)
    )
    options["target"] = target
    if spec is None:
        # The same rule calibration applies, on the same data: the same channels.
        mask, fill = channel_mask(input_channels, raw, options.get("mask"))
    elif any(np.isnan(r).any() for r in raw):
        raise ShapeError("train: a feature model needs complete raw data (it holds NaN)")
    else:
        mask, fill = np.ones(axes), np.zeros(axes)
    warmup = int(options.get("warmup_steps", CalibrationOptions.warmup))
    minimum = max(
        (spec.window + 2 * spec.hop) if spec else 4,
        (spec.window + (warmup + 10) * spec.hop) if spec else warmup + 10,
    )
    blocks = [_blocks(rec, folds, minimum, i) for i, rec in enumerate(raw)]
    to_inputs = (
        (lambda r: cleaned(r, mask, fill))
        if spec is None
        else (lambda r: compute_features(r, spec))
    )
    inputs = [[to_inputs(b) for b in rec_blocks] for rec_blocks in blocks]
    whole = [to_inputs(r) for r in raw]
    stacked = np.concatenate(whole)
    mean, std = _spread(stacked)
    delta = target == "delta"
    changes = np.concatenate([np.diff(w, axis=0) for w in whole])
    target_mean, target_std = _spread(changes) if delta else (mean, std)
    window = min(seq_len, min(b.shape[0] for rec in inputs for b in rec) - 1)
    width = stacked.shape[1]

    def data_of(parts: list[np.ndarray]) -> _Data:
        return _Data(parts, mean, std, target_mean, target_std, delta, window)

    show = Progress(enabled=progress if progress is not None else _stderr_is_terminal())
    fold_fits: list[tuple[_Fit, int]] = []
    common = dict(
        width=width,
        hidden=hidden,
        layers=layers,
        patience=patience,
        lr=lr,
        batch_size=batch_size,
        windows_per_epoch=windows_per_epoch,
        window=window,
        show=show,
    )
    with torch_state(threads, seed) as generator:
        for k in range(folds):
            # Pieces before and after the held-out block stay separate recordings; each is
            # contiguous raw data, so its features and gap filling are computed whole.
            pieces = [part for rec in blocks for part in (rec[:k], rec[k + 1 :]) if part]
            train_parts = [
                p
                for p in (to_inputs(np.concatenate(part)) for part in pieces)
                if p.shape[0] > window
            ]
            fit = _fit(
                data_of(train_parts),
                data_of([rec[k] for rec in inputs]),
                epochs=epochs,
                generator=generator,
                label=f"fold {k + 1}/{folds}",
                **common,
            )
            if fit.history:
                fold_fits.append((fit, k))
            if fit.interrupted:
                break
        if not fold_fits:
            raise KeyboardInterrupt  # stopped before a single epoch: nothing to keep
        interrupted = len(fold_fits) < folds or fold_fits[-1][0].interrupted
        best_epochs = [f.best_epoch for f, _ in fold_fits]
        if all(b == 1 for b in best_epochs) and not interrupted:
            warnings.warn(
                "train: the held-out loss was lowest after the first epoch in every "
                "fold: the model learnt nothing it could carry to new data (too "
                "little data, too high a learning rate, or nothing predictable)",
                TrainingWarning,
                stacklevel=2,
            )
        final_epochs = max(1, round(statistics.median(best_epochs)))
        final = None
        if not interrupted:
            final = _fit(
                data_of(whole),
                None,
                epochs=final_epochs,
                generator=generator,
                label="all data",
                **common,
            )
            interrupted = final.interrupted
    norm_in = Normalization(mean.astype(np.float32), std.astype(np.float32))
    norm_out = Normalization(target_mean.astype(np.float32), target_std.astype(np.float32))
    metadata: dict[str, Any] = {
        "training": {
            "recipe": "streamlstm.train v2: next-step LSTM, k-fold calibration",
            "torch": torch.__version__,
            "seed": seed,
            "hidden": hidden,
            "layers": layers,
            "target": target,
            "folds": folds,
            "seq_len": window,
            "batch_size": batch_size,
            "lr": lr,
            "windows_per_epoch": windows_per_epoch,
            "best_epochs": best_epochs,
            "epochs": final_epochs,
            "held_out_mse": [f.history[f.best_epoch - 1][2] for f, _ in fold_fits],
            "recordings": len(raw),
            "samples": int(sum(r.shape[0] for r in raw)),
            "interrupted": interrupted,
        }
    }
    model_channels = input_channels
    if spec is not None:
        metadata["features"] = spec.as_metadata()
        metadata["sample_channels"] = list(input_channels)
        model_channels = tuple(feature_names(input_channels, spec))

    def export(state: Mapping[str, torch.Tensor]) -> Model:
        return _export(
            state,
            layers,
            norm_in,
            norm_out,
            name=name,
            channels=model_channels,
            sample_rate=sample_rate,
            metadata=metadata,
        )

    cross = [(export(f.state), [blocks[i][k] for i in range(len(raw))]) for f, k in fold_fits]
    model = export(final.state) if final is not None and not final.interrupted else cross[-1][0]
    model = calibrate_cross_fitted(model, cross, **options)
    return TrainResult(
        model,
        [f.history for f, _ in fold_fits],
        best_epochs,
        final_epochs,
        time.monotonic() - started,
        interrupted,
    )


def _stderr_is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
