"""Bytes -> samples: the wire formats shared by the serial and MQTT sources.

Each decoder raises :class:`ParseError` with a short, stable ``reason`` (the label of the
``parse_errors`` metric) and never anything else, whatever the input. Decoded samples own
their memory: a queued frame never keeps its message's payload buffer alive. Supported:

* text lines, CSV or TSV, with configured sample columns and optional device-time and
  sensor-id columns;
* JSON objects (one per line on serial, one per message on MQTT)::

      {"sensor": "s1", "t": 1700000000.0, "rate": 1000, "samples": [[x, y, z], ...]}

  where ``sensor``, ``t`` (seconds, time of the first sample) and ``rate`` (Hz) are
  optional, and a single ``"sample": [x, y, z]`` may replace ``samples``. With the optional
  ``orjson`` installed (``pip install streamlstm[fast]``) it parses them (about 6x faster
  than the standard library's parser); whatever it refuses or might read differently goes
  to the standard parser, so the outcome is the same with or without it;
* raw little-endian float32, ``n * D`` values per message;
* binary frames (serial): COBS-encoded, ``0x00``-terminated, with a CRC-32, laid out as
  in :func:`encode_frame`. A torn or corrupted frame costs only itself: decoding resumes
  at the next ``0x00``.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

try:
    import orjson
except ImportError:  # an optional extra: the standard parser does it all
    orjson = None  # type: ignore[assignment]


class ParseError(ValueError):
    """Malformed input; ``reason`` is a short label such as ``"columns"`` or ``"crc"``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Block:
    """Decoded samples ``(n, D)`` float32, with start time ``t`` (s) and ``rate`` (Hz) if given."""

    samples: np.ndarray
    t: float | None = None
    rate: float | None = None
    sensor: str | None = None


def _as_block_samples(values: object, width: int) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):  # ragged nesting
        raise ParseError("schema", "samples are not a rectangular array") from None
    if array.size == 0:
        raise ParseError("empty", "no samples")
    if array.dtype.kind not in "iuf":
        raise ParseError("schema", f"samples must be numbers, got {array.dtype.kind!r} data")
    if array.ndim == 1 and width == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != width:
        raise ParseError("width", f"expected (n, {width}) samples, got shape {array.shape}")
    with np.errstate(over="ignore"):  # huge numbers become Inf and are rejected later
        return np.ascontiguousarray(array, dtype=np.float32)


def _optional_number(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParseError("schema", f"{key!r} must be a number")
    try:
        number = float(value)  # an integer of hundreds of digits does not fit a float
    except OverflowError:
        raise ParseError("number", f"{key!r} is out of range") from None
    if not math.isfinite(number):
        raise ParseError("number", f"{key!r} must be a finite number")
    return number


def _optional_sensor(obj: dict) -> str | None:
    sensor = obj.get("sensor")
    if sensor is None or isinstance(sensor, str):
        return sensor
    # Integers are accepted as ids; a huge one would make str() raise (digit limit).
    if isinstance(sensor, int) and not isinstance(sensor, bool) and abs(sensor) < 2**63:
        return str(sensor)
    raise ParseError("schema", "'sensor' must be a string")


#: 19 digits in a row (found as 19 zeros in the payload with every digit made "0" and
#: everything else " ": ten times faster than a regular expression) may be an integer
#: outside 64 bits, which ``json`` keeps exact (and the checks below refuse) but ``orjson``
#: turns into a float.
_DIGITS_AS_ZEROS = bytes(b"0"[0] if b in b"0123456789" else b" "[0] for b in range(256))
_LONG_DIGITS = b"0" * 19
#: Fewer opening brackets than this, so nesting shallower than this: ``json`` parses such
#: documents without running out of recursion depth (it fails somewhere past 500 levels,
#: depending on the caller's stack), and ``orjson`` never does.
_SHALLOW = 512


def _load_json(payload: bytes | bytearray) -> object:
    """The JSON document in ``payload``, or :class:`ParseError` ``encoding``/``json``.

    ``orjson`` (if installed) parses what it accepts exactly as ``json.loads`` would. What
    it refuses (NaN/Infinity literals, lone surrogates, numbers out of float range), and
    what it might read differently (integers past 64 bits, deep nesting: see above), the
    standard parser accepts or refuses as it always did.
    """
    if (
        orjson is not None
        and payload.count(b"[") + payload.count(b"{") < _SHALLOW
        and _LONG_DIGITS not in payload.translate(_DIGITS_AS_ZEROS)
    ):
        try:
            return orjson.loads(payload)
        except (ValueError, RecursionError):
            pass
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("encoding", "not UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ParseError("json", "not valid JSON") from None


def decode_json(payload: bytes | bytearray, width: int, *, max_samples: int) -> Block:
    """One JSON batch object -> :class:`Block` (schema in the module docstring)."""
    if not payload.strip():
        raise ParseError("empty", "empty payload")
    obj = _load_json(payload)
    if not isinstance(obj, dict):
        raise ParseError("schema", "expected a JSON object")
    if "samples" in obj:
        values = obj["samples"]
        if isinstance(values, list) and len(values) > max_samples:
            raise ParseError("oversize", f"{len(values)} samples > {max_samples}")
    elif "sample" in obj:
        values = [obj["sample"]]
    else:
        raise ParseError("schema", "no 'samples' or 'sample' key")
    rate = _optional_number(obj, "rate")
    if rate is not None and (rate <= 0 or not math.isfinite(1.0 / rate)):
        raise ParseError("schema", "'rate' must be > 0")
    return Block(
        _as_block_samples(values, width), _optional_number(obj, "t"), rate, _optional_sensor(obj)
    )


def decode_float32(payload: bytes | bytearray, width: int, *, max_samples: int) -> Block:
    """Raw little-endian float32, ``n * width`` values -> :class:`Block`."""
    if not payload:
        raise ParseError("empty", "empty payload")
    if len(payload) % (4 * width):
        raise ParseError("length", f"{len(payload)} bytes is not a multiple of {4 * width}")
    if len(payload) // (4 * width) > max_samples:
        raise ParseError("oversize", f"more than {max_samples} samples")
    return Block(np.frombuffer(payload, "<f4").astype(np.float32).reshape(-1, width))


@dataclass(frozen=True)
class LineFormat:
    """How to read one text line: separator and which columns hold what (0-based)."""

    columns: tuple[int, ...]
    separator: str = ","
    time_column: int | None = None
    sensor_column: int | None = None

    @property
    def min_fields(self) -> int:
        used = [*self.columns, self.time_column or 0, self.sensor_column or 0]
        return max(used) + 1

    def parse(self, line: bytes | bytearray) -> tuple[np.ndarray, float | None, str | None]:
        """One line -> ``(sample (D,) float32, device time or None, sensor id or None)``."""
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ParseError("encoding", "not UTF-8") from None
        if not text:
            raise ParseError("empty", "empty line")
        fields = text.split(self.separator)
        if len(fields) < self.min_fields:
            raise ParseError("columns", f"{len(fields)} fields, need {self.min_fields}")
        try:
            sample = np.array([float(fields[i]) for i in self.columns], np.float32)
            t = None if self.time_column is None else float(fields[self.time_column])
        except ValueError:
            raise ParseError("number", "a field is not a number") from None
        if t is not None and not math.isfinite(t):
            raise ParseError("number", "non-finite timestamp")
        sensor = None if self.sensor_column is None else fields[self.sensor_column].strip()
        if sensor == "":
            raise ParseError("columns", "empty sensor id")
        return sample, t, sensor


def decode_csv(payload: bytes | bytearray, fmt: LineFormat, *, max_samples: int) -> Block:
    """Several CSV/TSV lines in one message -> :class:`Block` (device time of the first line)."""
    lines = [line for line in payload.splitlines() if line.strip()]
    if not lines:
        raise ParseError("empty", "no lines")
    if len(lines) > max_samples:
        raise ParseError("oversize", f"{len(lines)} lines > {max_samples}")
    parsed = [fmt.parse(line) for line in lines]
    return Block(np.stack([p[0] for p in parsed]), parsed[0][1])


class Delimited:
    """Cuts a byte stream into records at ``delimiter``, each at most ``max_length`` bytes.

    A record longer than that is dropped whole (counted in :attr:`oversize`) and reading
    resumes after the next delimiter, so memory stays bounded whatever arrives.
    """

    def __init__(self, delimiter: bytes, max_length: int) -> None:
        self.delimiter = delimiter
        self.max_length = max_length
        self.oversize = 0
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the complete records (without delimiters)."""
        self._buffer += data
        *records, rest = bytes(self._buffer).split(self.delimiter)
        self._buffer = bytearray(rest)
        if self._skipping and records:
            records = records[1:]  # the tail of the oversize record
            self._skipping = False
        kept = []
        for record in records:
            if len(record) > self.max_length:
                self.oversize += 1
            else:
                kept.append(record)
        if len(self._buffer) > self.max_length:
            if not self._skipping:
                self.oversize += 1
            self._buffer.clear()
            self._skipping = True
        return kept

    def reset(self) -> None:
        """Forget a partial record (the device was reopened)."""
        self._buffer.clear()
        self._skipping = False


# -- binary frames ------------------------------------------------------------------------
FRAME_VERSION = 1
_HEADER = struct.Struct("<BHHdf")  # version, channel, count, t of first sample (s), rate (Hz)
_CRC = struct.Struct("<I")


def cobs_encode(data: bytes) -> bytes:
    """Consistent-overhead byte stuffing: ``data`` without any ``0x00`` bytes."""
    out = bytearray()
    for chunk in data.split(b"\0"):
        while len(chunk) >= 254:
            out.append(255)
            out += chunk[:254]
            chunk = chunk[254:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; :class:`ParseError` ``"cobs"`` on invalid input."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            raise ParseError("cobs", "bad block length")
        out += data[i + 1 : i + code]
        i += code
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(channel: int, samples: np.ndarray, *, t: float, rate: float) -> bytes:
    """A binary frame as devices should send it, including the trailing ``0x00``.

    Payload before stuffing: ``<B version=1><H channel><H count><d t><f rate>``, then
    ``count * D`` little-endian float32, then ``<I crc32>`` of everything before it.
    """
    samples = np.ascontiguousarray(samples, "<f4")
    body = _HEADER.pack(FRAME_VERSION, channel, samples.shape[0], t, rate) + samples.tobytes()
    return cobs_encode(body + _CRC.pack(zlib.crc32(body))) + b"\0"


def decode_frame(record: bytes, width: int) -> tuple[int, Block]:
    """One frame (without its ``0x00``) -> ``(channel, Block)``; checks stuffing, CRC, length."""
    if not record:
        raise ParseError("empty", "empty frame")
    raw = cobs_decode(record)
    if len(raw) < _HEADER.size + _CRC.size:
        raise ParseError("length", f"frame of {len(raw)} bytes is too short")
    body, (crc,) = raw[: -_CRC.size], _CRC.unpack(raw[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise ParseError("crc", "checksum mismatch")
    version, channel, count, t, rate = _HEADER.unpack_from(body)
    if version != FRAME_VERSION:
        raise ParseError("schema", f"frame version {version}")
    if len(body) != _HEADER.size + 4 * width * count or count == 0:
        raise ParseError("length", f"{count} samples of width {width} do not fit the frame")
    samples = np.frombuffer(body, "<f4", offset=_HEADER.size).astype(np.float32)
    valid_t = t if math.isfinite(t) else None
    valid_rate = float(rate) if math.isfinite(rate) and rate > 0 else None
    return channel, Block(samples.reshape(count, width), valid_t, valid_rate)
