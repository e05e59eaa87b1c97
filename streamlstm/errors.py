"""The exception tree: catch :class:`StreamLSTMError` for anything raised on purpose."""

from __future__ import annotations


class StreamLSTMError(Exception):
    """Base class of every error streamlstm raises deliberately."""


class ModelFormatError(StreamLSTMError):
    """A weight file is unreadable, corrupt, of unknown version, or not runnable exactly."""


class ShapeError(StreamLSTMError, ValueError):
    """An array has the wrong shape or dtype (weights, samples or state)."""


class InvalidSampleError(StreamLSTMError, ValueError):
    """A sample holds NaN or Inf; the stream's state was left untouched."""


class ConfigError(StreamLSTMError):
    """A configuration file or option is invalid."""


class SourceError(StreamLSTMError):
    """A data source failed (device gone, broker unreachable, unreadable file)."""


class SinkError(StreamLSTMError):
    """An output sink failed."""


class CudaUnavailableError(StreamLSTMError, RuntimeError):
    """The CUDA bank was asked for but numba-cuda or a GPU (or the simulator) is missing."""
