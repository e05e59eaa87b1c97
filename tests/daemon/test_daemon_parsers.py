"""Wire-format decoders: exact results on good input, only ParseError on anything else."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlstm.sources import MAX_SENSOR_ID_BYTES, check_sensor_id, parsers
from streamlstm.sources.parsers import (
    Delimited,
    LineFormat,
    ParseError,
    cobs_decode,
    cobs_encode,
    decode_csv,
    decode_float32,
    decode_frame,
    decode_json,
    encode_frame,
)

FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.binary(max_size=700))
def test_cobs_round_trip_has_no_zero_bytes(data):
    encoded = cobs_encode(data)
    assert b"\0" not in encoded
    assert cobs_decode(encoded) == data


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_a_frame_or_a_parse_error(data):
    try:
        channel, block = decode_frame(data, 3)
    except ParseError as exc:
        assert exc.reason in {"empty", "cobs", "length", "crc", "schema"}
    else:  # only possible for a well-formed frame
        assert block.samples.shape[1] == 3 and 0 <= channel < 65536


@FUZZ
@given(st.lists(st.integers(0, 5), min_size=1, max_size=8), st.data())
def test_frame_stream_recovers_every_intact_frame_after_damage(counts, data):
    frames = [
        encode_frame(i, np.full((n + 1, 3), i, np.float32), t=float(i), rate=50.0)
        for i, n in enumerate(counts)
    ]
    damaged = {i for i in range(len(frames)) if data.draw(st.booleans())}
    stream = b""
    for i, frame in enumerate(frames):
        if i in damaged:  # torn: cut short, then garbage up to the next frame boundary
            cut = data.draw(st.integers(1, len(frame) - 2))
            stream += (
                frame[:cut]
                + data.draw(st.binary(min_size=0, max_size=20)).replace(b"\0", b"")
                + b"\0"
            )
        else:
            stream += frame
    splitter = Delimited(b"\0", 4096)
    recovered = []
    position = 0
    while position < len(stream):  # arbitrary read sizes, as a UART delivers them
        size = data.draw(st.integers(1, 64))
        for record in splitter.feed(stream[position : position + size]):
            with contextlib.suppress(ParseError):  # damaged frames: counted by the source
                recovered.append(decode_frame(record, 3)[0])
        position += size
    assert set(recovered) >= set(range(len(frames))) - damaged
    assert set(recovered) <= set(range(len(frames)))


def test_frame_fields_decode_exactly():
    samples = np.arange(12, dtype=np.float32).reshape(4, 3)
    channel, block = decode_frame(encode_frame(7, samples, t=12.5, rate=200.0)[:-1], 3)
    assert channel == 7 and block.t == 12.5 and block.rate == 200.0
    np.testing.assert_array_equal(block.samples, samples)
    with pytest.raises(ParseError, match="length"):
        decode_frame(encode_frame(7, samples, t=0, rate=1)[:-1], 4)  # wrong width


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_json_samples_or_a_parse_error(data):
    try:
        block = decode_json(data, 3, max_samples=100)
    except ParseError as exc:
        assert exc.reason in {"encoding", "json", "schema", "number", "width", "empty", "oversize"}
    else:
        assert block.samples.dtype == np.float32 and block.samples.shape[1] == 3


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**2000)  # no float holds these
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["t", "rate", "samples", "sample", "sensor"]), inner, max_size=5
        )
    ),
    max_leaves=20,
)


@FUZZ
@given(json_values)
def test_any_json_document_is_samples_or_a_parse_error(value):
    try:
        block = decode_json(json.dumps(value).encode(), 3, max_samples=100)
    except ParseError:
        return
    assert block.samples.ndim == 2 and block.samples.shape[1] == 3
    assert block.t is None or np.isfinite(block.t)


def test_json_batch_fields():
    block = decode_json(
        b'{"sensor": "s1", "t": 5, "rate": 10, "samples": [[1,2,3],[4,5,6]]}', 3, max_samples=10
    )
    assert (block.sensor, block.t, block.rate) == ("s1", 5.0, 10.0)
    assert block.samples.tolist() == [[1, 2, 3], [4, 5, 6]]
    for payload, reason in [
        (b'{"samples": [[1,2,3]]', "json"),
        (b"[1,2,3]", "schema"),
        (b'{"samples": [[1,2]]}', "width"),
        (b'{"samples": []}', "empty"),
        (b'{"samples": [[1,2,3],[4,5]]}', "schema"),
        (b'{"samples": [["1","2","3"]]}', "schema"),
        (b'{"samples": [[1,2,3]], "rate": -1}', "schema"),
        (b'{"samples": [[1,2,3]], "t": "now"}', "schema"),
        (b'{"samples": ' + b"[[1,2,3]," * 11 + b"[1,2,3]" + b"]" * 11 + b"}", "schema"),
        (b'{"samples": [' + b"[1,2,3]," * 10 + b"[1,2,3]]}", "oversize"),
        (b"\xff{}", "encoding"),
    ]:
        with pytest.raises(ParseError) as info:
            decode_json(payload, 3, max_samples=10)
        assert info.value.reason == reason, payload


def test_hostile_json_values_are_parse_errors_never_other_exceptions():
    digits400 = b"1" + b"0" * 400
    for payload, reason in [
        (b'{"t": ' + digits400 + b', "samples": [[1,2,3]]}', "number"),  # issue 12, item 1
        (b'{"rate": ' + digits400 + b', "samples": [[1,2,3]]}', "number"),
        (b'{"t": -' + digits400 + b', "samples": [[1,2,3]]}', "number"),
        (b'{"sensor": ' + b"9" * 4000 + b', "samples": [[1,2,3]]}', "schema"),  # str() limit
        (b'{"sensor": [1], "samples": [[1,2,3]]}', "schema"),
        (b'{"samples": [[' + digits400 + b",2,3]]}", "schema"),
        (b'{"samples": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}", "schema"),  # deep nesting
        (b'{"samples": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "json"),  # recursion
        (b'{"samples": [[1,2,3]], "rate": 5e-324}', "schema"),  # 1/rate overflows
        (b'{"samples": [[1,2,3]], "t": true}', "schema"),
        (b'{"samples": {"a": 1}}', "schema"),
    ]:
        with pytest.raises(ParseError) as info:
            decode_json(payload, 3, max_samples=10)
        assert info.value.reason == reason, payload[:60]
    # Sensor ids that are integers still work; the id check happens at intake.
    assert decode_json(b'{"sensor": 17, "sample": [1,2,3]}', 3, max_samples=1).sensor == "17"


def _outcome(payload: bytes) -> tuple:
    """What decode_json makes of ``payload``: its fields, or its parse error's reason."""
    try:
        block = decode_json(payload, 3, max_samples=10)
    except ParseError as exc:
        return ("error", exc.reason)
    return (block.samples.tobytes(), block.samples.shape, block.t, block.rate, block.sensor)


def _with_and_without_orjson(payload: bytes) -> tuple[tuple, tuple]:
    with_it = _outcome(payload)
    saved, parsers.orjson = parsers.orjson, None
    try:
        return with_it, _outcome(payload)
    finally:
        parsers.orjson = saved


HOSTILE_JSON = [
    b'{"samples": [[NaN, 1, 2], [Infinity, -Infinity, 0]]}',
    b'{"samples": [[1e999, 1, 2]]}',
    b'{"samples": [[18446744073709551616, 1, 2]]}',  # past 64 bits: orjson makes it a float
    b'{"samples": [[-9223372036854775809, 1, 2]]}',
    b'{"samples": [[18446744073709551615, 1, 2]]}',
    b'{"sensor": 18446744073709551616, "samples": [[1,2,3]]}',
    b'{"t": 123456789012345678901234567890, "samples": [[1,2,3]]}',
    b'{"sensor": "\\ud800", "samples": [[1,2,3]]}',  # a lone surrogate, escaped
    b'{"sensor": "\xed\xa0\x80", "samples": [[1,2,3]]}',  # a surrogate in raw UTF-8
    b'\xef\xbb\xbf{"samples": [[1,2,3]]}',  # a byte-order mark
    b'{"samples": [[1,2,3]], "samples": [[4,5,6]]}',  # the last duplicate key wins
    b'{"samples": [[-0.0, 1E+2, 1e-400]], "t": 0.1000000000000000055511151231257827}',
    b'{"samples": [[1,2,3]]} trailing',
    b'{"samples": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"samples": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"samples": [[1,2,3]], "rate": 5e-324}',
    b'{"x": ' + b"[" * 400 + b"]" * 400 + b', "samples": [[1,2,3]]}',  # deep, but parsed
    b'{"x": ' + b"[" * 600 + b"]" * 600 + b', "samples": [[1,2,3]]}',
]


@pytest.mark.skipif(parsers.orjson is None, reason="orjson (optional) is not installed")
def test_orjson_and_the_standard_parser_decode_alike():
    for payload in HOSTILE_JSON:
        with_it, without = _with_and_without_orjson(payload)
        assert with_it == without, payload[:60]
    rng = np.random.default_rng(5)
    for scale in (1e-30, 1e-3, 1.0, 1e6, 1e30):
        values = (rng.standard_normal((4, 3)) * scale).tolist()
        payload = json.dumps(
            {"t": float(rng.random() * 2e9), "rate": 100, "samples": values, "sensor": "s1"}
        ).encode()
        with_it, without = _with_and_without_orjson(payload)
        assert with_it == without and with_it[0] != "error"


@pytest.mark.skipif(parsers.orjson is None, reason="orjson (optional) is not installed")
@FUZZ
@given(json_values)
def test_any_json_document_decodes_alike_with_and_without_orjson(value):
    with_it, without = _with_and_without_orjson(json.dumps(value).encode())
    assert with_it == without


@pytest.mark.skipif(parsers.orjson is None, reason="orjson (optional) is not installed")
@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_alike_with_and_without_orjson(data):
    with_it, without = _with_and_without_orjson(data)
    assert with_it == without


def test_sensor_ids_are_checked_once_at_intake():
    for good in ["s1", "pump/3", "é", "\U0001f600", "x" * MAX_SENSOR_ID_BYTES]:
        assert check_sensor_id(good) == good
    for bad in [
        "",
        "x" * (MAX_SENSOR_ID_BYTES + 1),
        "é" * (MAX_SENSOR_ID_BYTES // 2 + 1),  # short in characters, long in UTF-8 bytes
        "x" * 65_519,
        "\ud800",  # a lone surrogate: not encodable as UTF-8
        "a+b",
        "a#",
        "nul\x00",
        "tab\t",
        "\x85",
        "\ufffe",
        "\U0010ffff",
    ]:
        with pytest.raises(ParseError) as info:
            check_sensor_id(bad)
        assert info.value.reason == "sensor_id"


def test_decoded_samples_never_keep_the_payload_buffer_alive():
    # A frame viewing its message's payload would pin the whole buffer while queued.
    payload = np.arange(12, dtype="<f4").tobytes()
    frame_payload = encode_frame(1, np.ones((4, 3), np.float32), t=0.0, rate=1.0)[:-1]
    for samples in [
        decode_float32(payload, 3, max_samples=10).samples,
        decode_frame(frame_payload, 3)[1].samples,
        decode_json(b'{"samples": [[1,2,3]]}', 3, max_samples=10).samples,
    ]:
        base = samples
        while base is not None:
            assert not isinstance(base, (bytes, bytearray, memoryview)), type(base)
            base = getattr(base, "base", None)


def test_nan_and_inf_samples_pass_decoding_for_the_detector_to_reject():
    block = decode_json(b'{"samples": [[NaN, 1, 2], [Infinity, 0, 0]]}', 3, max_samples=10)
    assert np.isnan(block.samples[0, 0]) and np.isinf(block.samples[1, 0])


@FUZZ
@given(st.binary(max_size=200))
def test_any_line_is_a_sample_or_a_parse_error(line):
    fmt = LineFormat((1, 2, 3), ",", time_column=0)
    try:
        sample, t, _ = fmt.parse(line)
    except ParseError as exc:
        assert exc.reason in {"encoding", "empty", "columns", "number"}
    else:
        assert sample.shape == (3,) and np.isfinite(t)


def test_csv_payload_and_float32_payload():
    fmt = LineFormat((1, 2, 3), ",", time_column=0)
    block = decode_csv(b"10,1,2,3\n11,4,5,6\n", fmt, max_samples=10)
    assert block.t == 10 and block.samples.tolist() == [[1, 2, 3], [4, 5, 6]]
    raw = np.arange(6, dtype="<f4").tobytes()
    assert decode_float32(raw, 3, max_samples=10).samples.tolist() == [[0, 1, 2], [3, 4, 5]]
    for payload, reason in [(b"", "empty"), (raw[:-1], "length"), (raw * 10, "oversize")]:
        with pytest.raises(ParseError) as info:
            decode_float32(payload, 3, max_samples=3)
        assert info.value.reason == reason


@FUZZ
@given(st.lists(st.binary(max_size=100), max_size=30))
def test_delimited_memory_stays_bounded(chunks):
    splitter = Delimited(b"\n", 64)
    for chunk in chunks:
        for record in splitter.feed(chunk):
            assert len(record) <= 64 and b"\n" not in record
        assert len(splitter._buffer) <= 64
