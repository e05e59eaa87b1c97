"""The built-in safetensors reader/writer against the reference library, and malformed files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from streamlstm.errors import ModelFormatError
from streamlstm.formats._safetensors import MAX_HEADER_BYTES, read_safetensors, write_safetensors

safetensors_numpy = pytest.importorskip("safetensors.numpy")

TENSORS = {
    "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.linspace(-1, 1, 5),
    "half": np.array([0.5, -2.0], np.float16),
    "count": np.array(7, np.int64),
    "empty": np.zeros((0, 3), np.float32),
}


def test_reads_what_the_reference_library_writes(tmp_path):
    path = tmp_path / "ref.safetensors"
    safetensors_numpy.save_file(TENSORS, str(path), metadata={"format": "np", "k": "v"})
    tensors, metadata = read_safetensors(path)
    assert metadata == {"format": "np", "k": "v"}
    assert set(tensors) == set(TENSORS)
    for name, array in TENSORS.items():
        assert tensors[name].dtype == array.dtype and tensors[name].shape == array.shape
        np.testing.assert_array_equal(tensors[name], array)
        assert tensors[name].flags.writeable


def test_reference_library_reads_what_we_write(tmp_path):
    path = write_safetensors(tmp_path / "ours.safetensors", TENSORS, {"source": "test"})
    loaded = safetensors_numpy.load_file(str(path))
    for name, array in TENSORS.items():
        np.testing.assert_array_equal(loaded[name], array)
    assert read_safetensors(path)[1] == {"source": "test"}
    assert [p.name for p in tmp_path.iterdir()] == ["ours.safetensors"]


def test_bfloat16_is_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    values = torch.tensor([1.0, -3.140625, 1e-3, 65280.0], dtype=torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    save_file({"v": values}, str(path))
    got = read_safetensors(path)[0]["v"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values.float().numpy())


def raw_file(path, header: dict, data: bytes = b"", length: int | None = None) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (
            {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 4,
            r"data_offsets \[0, 8\] outside the 4-byte data buffer",
        ),
        (
            {"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            r"8 bytes of data for shape \(3,\) F32 \(expected 12\)",
        ),
        (
            {
                "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "tensors 't' and 'u' overlap",
        ),
        (
            {"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "unsupported dtype 'C64'",
        ),
        (
            {"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}},
            b"",
            "shape must be a list of non-negative integers",
        ),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "outside the"),
        ({"t": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "expected keys dtype, shape"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__ must map strings to strings"),
    ],
)
def test_malformed_headers(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    raw_file(path, header, data)
    with pytest.raises(ModelFormatError, match=message):
        read_safetensors(path)


def test_header_length_checks(tmp_path):
    path = tmp_path / "bad.safetensors"
    raw_file(path, {}, length=MAX_HEADER_BYTES + 1)
    with pytest.raises(ModelFormatError, match="exceeds the"):
        read_safetensors(path)
    raw_file(path, {}, length=1000)
    with pytest.raises(ModelFormatError, match="runs past the end"):
        read_safetensors(path)
    path.write_bytes(b"\x01\x00")
    with pytest.raises(ModelFormatError, match="too short"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe[]")
    with pytest.raises(ModelFormatError, match="not UTF-8 JSON"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(ModelFormatError, match="not a JSON object"):
        read_safetensors(path)


def test_writer_refuses_unsupported_dtypes(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot be written"):
        write_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})


def test_random_damage_gives_model_format_error_or_well_formed_arrays(tmp_path):
    path = write_safetensors(tmp_path / "w.safetensors", TENSORS, {"k": "v"})
    data = path.read_bytes()
    rng = np.random.default_rng(7)
    refused = 0
    for _ in range(300):
        damaged = bytearray(data)
        for where in rng.integers(0, len(data), rng.integers(1, 4)):
            damaged[where] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            tensors, _ = read_safetensors(path)
        except ModelFormatError:
            refused += 1
            continue

        # Flipped data (or name) bytes read as other numbers (or names); every shape and
        # dtype must still be intact.
        def layout(named):
            return sorted((v.shape, v.dtype.str) for v in named.values())

        assert layout(tensors) == layout(TENSORS)
    assert refused > 50
