"""streamlstm: Numba-compiled LSTM/GRU inference one sample at a time, for live sensor streams.

Load weights trained elsewhere, step a stream or a bank of thousands, embed the compiled
step in your own ``@njit`` code.

>>> import numpy as np, streamlstm as sl
>>> model = sl.random_model(3, [16], output_size=3)
>>> stream = model.stream()
>>> stream.step(np.ones(3, np.float32)).shape
(3,)
"""

from importlib.metadata import PackageNotFoundError, version

from . import _kernel_cache
from .bank import Bank
from .detect import AlertEvent, Detector
from .errors import (
    ConfigError,
    CudaUnavailableError,
    InvalidSampleError,
    ModelFormatError,
    ShapeError,
    SinkError,
    SourceError,
    StreamLSTMError,
)
from .formats import load, save
from .model import DenseLayer, Model, Normalization, RecurrentLayer, random_model
from .stream import Stream
from .window_spec import WindowSpec
from .windows import WindowBank, WindowOutputs

# Before any kernel loads from Numba's cache (at its first call): drop the cache if a
# kernel source changed since it was written.
_kernel_cache.refresh()

try:
    __version__ = version("streamlstm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "AlertEvent",
    "Bank",
    "ConfigError",
    "CudaUnavailableError",
    "DenseLayer",
    "Detector",
    "InvalidSampleError",
    "Model",
    "ModelFormatError",
    "Normalization",
    "RecurrentLayer",
    "ShapeError",
    "SinkError",
    "SourceError",
    "Stream",
    "StreamLSTMError",
    "WindowBank",
    "WindowOutputs",
    "WindowSpec",
    "__version__",
    "load",
    "random_model",
    "save",
]
