"""What the daemon steps samples through: a model plus the anomaly detector.

The daemon depends only on the small :class:`Pipeline` protocol below, which
:class:`streamlstm.Detector` satisfies; :func:`load_pipeline` builds the real one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, StreamLSTMError
from ..formats._model_build import file_sha256
from ..model import Model

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

    def export_state(self) -> Mapping[str, Any]: ...

    def copy_rows(self) -> Any:
        """:meth:`export_state` in slices (a :class:`streamlstm.detect.detector.RowCopy`):
        ``advance(rows)`` between updates until ``done``, then ``state()`` on any thread."""
        ...

    def import_state(self, snapshot: Mapping[str, Any]) -> None: ...

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


#: ``[detector]`` keys for window classifiers only (:class:`streamlstm.detect.WindowDetector`).
CLASS_ALERT_KEYS = ("normal_class", "min_probability", "consecutive")


def make_detector(model: Model, settings: Mapping[str, Any]) -> Pipeline:
    """The detector for ``model`` with the ``[detector]`` settings: a
    :class:`streamlstm.detect.WindowDetector` if the model declares a window (a classifier
    or an autoencoder), else a :class:`streamlstm.Detector`."""
    from ..detect import Detector, WindowDetector

    given = {key: settings.get(key) for key in CLASS_ALERT_KEYS if settings.get(key) is not None}
    try:
        if model.window is not None:
            return WindowDetector(
                model,
                capacity=settings["capacity"],
                threads=settings["threads"],
                **given,
                **settings["options"],
            )
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for window classifiers, and model {model.name!r} "
                "is a next-step predictor"
            )
        return Detector(
            model, capacity=settings["capacity"], threads=settings["threads"], **settings["options"]
        )
    except (TypeError, ValueError, StreamLSTMError) as exc:
        raise ConfigError(f"detector: {exc}") from None


def sample_width(pipeline: Pipeline, model: Model) -> int:
    """How many values one raw sample has (the detector may compute features from them)."""
    return int(getattr(pipeline, "axes", model.input_size))


def batches_several_sensors(config: Mapping[str, Any]) -> bool:
    """Whether a site's micro-batches can hold more than one sensor: an MQTT source, more
    than one source, or a fleet worker. Serial, replay and demo sources carry one each."""
    sources = config["sources"]
    return (
        config.get("fleet") is not None
        or len(sources) > 1
        or any(source["type"] == "mqtt" for source in sources)
    )


def compile_kernels(model: Model, config: Mapping[str, Any]) -> None:
    """Step a throwaway detector through the kernels the site ``config`` will use: the
    serial path, and the parallel one only where a micro-batch can hold several sensors
    (see :func:`streamlstm.bank.runs_in_parallel`).

    Numba compiles (or loads from its cache) a kernel on its first call; doing that here,
    before the daemon says READY, keeps a cold compile (a minute on a small machine) out
    of the compute loop, where it would starve the systemd watchdog.
    """
    from ..bank import PARALLEL_THRESHOLD

    detector = make_detector(model, {**config["detector"], "capacity": 1})
    width = sample_width(detector, model)
    batches = [["warm-up"]]
    if batches_several_sensors(config):
        batches.append([f"warm-up-{i}" for i in range(PARALLEL_THRESHOLD)])
    for sensors in batches:
        detector.update(
            sensors,
            np.zeros((len(sensors), width), np.float32),
            np.arange(len(sensors), dtype=np.float64),
        )
