"""What the daemon steps samples through: a model plus the anomaly detector.

The daemon depends only on the small :class:`Pipeline` protocol below, which
:class:`streamlstm.Detector` satisfies; :func:`load_pipeline` builds the real one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..detect.detector import RowCopy
from ..detect.state import AnyDetectorState
from ..errors import ConfigError, StreamLSTMError
from ..formats._model_build import file_sha256
from ..model import Model
from .config import (
    DemoSourceConfig,
    DetectorConfig,
    ReplaySourceConfig,
    SerialSourceConfig,
    SiteConfig,
    SourceConfig,
)

#: Where the shipped default model is looked for, in order: inside the installed
#: package, then in a source checkout's ``weights/`` folder.
DEFAULT_MODEL_NAME = "accel-default.npz"


class Pipeline(Protocol):
    """Steps micro-batches and decides alerts; keeps per-sensor state between calls."""

    last_scores: np.ndarray  # (M,) float, NaN for rejected samples
    last_status: np.ndarray  # (M,) int8, 0 = accepted

    def update(
        self, sensor_ids: Sequence[Hashable], samples: np.ndarray, timestamps: np.ndarray
    ) -> list[Any]:
        """``samples`` ``(M, D)`` in sensor units, ``timestamps`` ``(M,)`` s -> alert events."""
        ...

    def export_state(self) -> AnyDetectorState: ...

    def copy_rows(self) -> RowCopy[AnyDetectorState]:
        """:meth:`export_state` in slices (a :class:`streamlstm.detect.detector.RowCopy`):
        ``advance(rows)`` between updates until ``done``, then ``state()`` on any thread."""
        ...

    def import_state(self, state: AnyDetectorState) -> None: ...

    def evict(self, sensors: Sequence[Hashable], t: Sequence[float] | None = None) -> list[Any]:
        """Drop these sensors' state (their rows are reused); returns the end events of
        their open alerts, at ``t`` (reason ``"evicted"``)."""
        ...


@dataclass(frozen=True)
class LoadedModel:
    """A model and where it came from: ``sha256`` of the weight file identifies it in alerts."""

    model: Model
    path: Path
    sha256: str

    @property
    def model_id(self) -> str:
        return self.model.name


def default_model_path() -> Path:
    """The shipped default model, or :class:`ConfigError` naming where it was looked for."""
    candidates = [
        Path(str(resources.files("streamlstm") / "data" / DEFAULT_MODEL_NAME)),
        Path(__file__).resolve().parents[2] / "weights" / DEFAULT_MODEL_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "the default model is missing from this installation (looked in "
        + ", ".join(map(str, candidates))
        + "); set [model] path in a config"
    )


def load_model(path: str | None) -> LoadedModel:
    """Load weights (any supported format) and hash the file; ``None`` = the default model."""
    from .. import formats

    file = Path(path) if path else default_model_path()
    try:
        digest = file_sha256(file)
    except OSError as exc:
        raise ConfigError(f"model.path: cannot read {file} ({exc.strerror or exc})") from None
    try:
        model = formats.load(file)
    except StreamLSTMError as exc:
        raise ConfigError(f"model.path: {exc}") from None
    return LoadedModel(model, file, digest)


def make_detector(model: Model, settings: DetectorConfig) -> Pipeline:
    """The detector for ``model`` with the ``[detector]`` settings: a
    :class:`streamlstm.detect.WindowDetector` if the model declares a window (a classifier
    or an autoencoder; on the GPU with ``device = "cuda"``), else a
    :class:`streamlstm.Detector`."""
    from ..detect import Detector, WindowDetector

    # For window classifiers only; None: the detector's default.
    class_alerts = {
        "normal_class": settings.normal_class,
        "min_probability": settings.min_probability,
        "consecutive": settings.consecutive,
    }
    given: dict[str, Any] = {k: value for k, value in class_alerts.items() if value is not None}
    device = settings.device
    try:
        if model.window is not None:
            return WindowDetector(
                model,
                capacity=settings.capacity,
                threads=settings.threads,
                device=device,
                **given,
                **settings.options,
            )
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for window classifiers, and model {model.name!r} "
                "is a next-step predictor"
            )
        if device != "cpu":
            raise ConfigError(
                f"device = {device!r}: only for window models, and model {model.name!r} is "
                "a next-step predictor, whose detector runs on the CPU (leave device out)"
            )
        return Detector(
            model, capacity=settings.capacity, threads=settings.threads, **settings.options
        )
    except (TypeError, ValueError, StreamLSTMError) as exc:
        raise ConfigError(f"detector: {exc}") from None


def sample_width(pipeline: Pipeline, model: Model) -> int:
    """How many values one raw sample has (the detector may compute features from them)."""
    return int(getattr(pipeline, "axes", model.input_size))


def carries_one_sensor(source: SourceConfig) -> bool:
    """Whether all of a source's samples belong to one sensor: the demo, a replay, or a
    serial port of CSV/TSV lines without a ``sensor_column``. A serial port's JSON records
    may name their sensors and its binary frames carry one per channel; an MQTT topic
    names the sensor of each message."""
    if isinstance(source, (DemoSourceConfig, ReplaySourceConfig)):
        return True
    return (
        isinstance(source, SerialSourceConfig)
        and source.format in ("csv", "tsv")
        and source.sensor_column is None
    )


def batches_several_sensors(config: SiteConfig) -> bool:
    """Whether a site's micro-batches can hold more than one sensor: more than one source,
    one that does not :func:`carry one sensor <carries_one_sensor>`, or a fleet worker."""
    sources = config.sources
    return config.fleet is not None or len(sources) > 1 or not all(map(carries_one_sensor, sources))


def warmup_batches(detector: Pipeline, config: SiteConfig) -> list[list[str]]:
    """Micro-batches (one sensor id per sample) that take a fresh ``detector`` of the site
    ``config`` through every kernel it will use. A streaming detector runs its serial
    kernel, and its parallel one only where a micro-batch can hold several sensors
    (:func:`streamlstm.bank.runs_in_parallel`). A window detector's first window runs the
    ring and the evaluator (or the GPU kernel): all it runs, on any number of threads."""
    from ..bank import PARALLEL_THRESHOLD
    from ..detect import WindowDetector

    if isinstance(detector, WindowDetector):
        return [["warm-up"] * detector.spec.length]
    batches = [["warm-up"]]
    if batches_several_sensors(config):
        batches.append([f"warm-up-{i}" for i in range(PARALLEL_THRESHOLD)])
    return batches


def compile_kernels(model: Model, config: SiteConfig) -> None:
    """Step a throwaway detector through the kernels the site ``config`` will use
    (:func:`warmup_batches`).

    Numba compiles (or loads from its cache) a kernel on its first call; doing that here,
    before the daemon says READY, keeps a cold compile (a minute on a small machine) out
    of the compute loop, where it would starve the systemd watchdog.
    """
    detector = make_detector(model, dataclasses.replace(config.detector, capacity=1))
    width = sample_width(detector, model)
    for sensors in warmup_batches(detector, config):
        detector.update(
            sensors,
            np.zeros((len(sensors), width), np.float32),
            np.arange(len(sensors), dtype=np.float64),
        )
