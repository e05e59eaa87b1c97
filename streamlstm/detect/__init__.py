"""Online anomaly detection: residual scores, calibrated thresholds, debounced alerts.

Convention, stated once for the whole package: **a high score means anomalous**. Every
score here is a non-negative number that is about 1 or below on the data the model was
calibrated on and grows as a sample stops looking like it; thresholds are compared with
``score > threshold``.

Two kinds of model are supported, declared in ``model.calibration["score"]``:

* ``"residual"`` (a next-step predictor): the model sees ``x_t`` and predicts
  ``x_{t+1}`` (``target="level"``) or ``x_{t+1} - x_t`` (``target="delta"``, the
  training recipe's default); the score of ``x_t`` is on the residual scale: the root
  mean square ``sqrt(|W (x_t - x̂_t - centre)|² / n)`` of the whitened residual against
  the prediction made at ``t - 1`` over the ``n`` channels scored for that sample, where
  ``W`` and ``centre`` come from calibration (per-channel standardisation or
  Mahalanobis). An optional level term adds the input's own whitened distance from its
  calibration distribution inside the root. With ``pool="max"`` (the training recipe's
  default) the score is instead the largest absolute whitened component, level term
  included. Channels masked at calibration and missing (NaN) values are never scored;
  see :class:`Detector`.
* ``"direct"``: the model's head outputs an anomaly score or probability itself; only a
  threshold is calibrated.
* ``"reconstruction"`` (a window autoencoder): the whitened reconstruction error of each
  window, on the same residual scale (:func:`calibrate_reconstruction`).

Window models (:mod:`streamlstm.windows`: classifiers and autoencoders evaluated on
windows) are detected by :class:`WindowDetector` (:mod:`streamlstm.detect.windowed`), with
the same events; a classifier's alerts carry the class (``AlertEvent.label``).

Either score is smoothed causally (EWMA) and fed to a per-sensor alert state machine
(debounce, hysteresis, minimum quiet time, warm-up; durations named with their unit,
:mod:`streamlstm.detect.durations`); see :class:`Detector`. Thresholds come from a
declared false-alarm budget (:func:`calibrate`).
"""

from .calibration import (
    CalibrationOptions,
    CalibrationWarning,
    calibrate,
    calibrate_reconstruction,
    calibration_scores,
)
from .calibration_record import Calibration
from .detector import Detector
from .events import AlertEvent
from .features import FeatureSpec, compute_features
from .params import DetectorParams
from .state import DetectorState, WindowDetectorState
from .windowed import ClassAlertParams, WindowDetector

__all__ = [
    "AlertEvent",
    "Calibration",
    "CalibrationOptions",
    "CalibrationWarning",
    "ClassAlertParams",
    "Detector",
    "DetectorParams",
    "DetectorState",
    "FeatureSpec",
    "WindowDetector",
    "WindowDetectorState",
    "calibrate",
    "calibrate_reconstruction",
    "calibration_scores",
    "compute_features",
]
