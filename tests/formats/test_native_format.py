"""The native .npz format: exact round trips and a precise error for every kind of bad file."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.errors import ModelFormatError
from streamlstm.formats import load, save
from streamlstm.formats.native import META, load_native, model_sha256, save_native
from streamlstm.model import DenseLayer, Model, Normalization, gru_layer


def full_model(dtype=np.float32) -> Model:
    """Two LSTM layers (one projected), a Linear-relu-Linear head, both norms, all metadata."""
    rng = np.random.default_rng(7)
    base = sl.random_model(3, [12, 10], output_size=4, dtype=dtype, seed=3)
    first = base.layers[0]
    projected = sl.model.lstm_layer(
        first.w_ih,
        rng.normal(0, 0.3, (48, 5)),
        first.b_ih,
        first.b_hh,
        rng.normal(0, 0.3, (5, 12)),
        dtype=dtype,
    )
    second = sl.model.lstm_layer(rng.normal(0, 0.3, (40, 5)), base.layers[1].w_hh, dtype=dtype)
    head = (
        DenseLayer(
            rng.normal(0, 0.3, (6, 10)).astype(dtype), rng.normal(0, 1, 6).astype(dtype), "relu"
        ),
        DenseLayer(rng.normal(0, 0.3, (2, 6)).astype(dtype), np.zeros(2, dtype)),
    )
    return Model(
        layers=(projected, second),
        head=head,
        input_norm=Normalization(np.array([0.1, -2, 3], dtype), np.array([1, 2, 0.5], dtype)),
        output_norm=Normalization(np.array([5, 6], dtype), np.array([0.25, 4], dtype)),
        name="pump-7 accel",
        sample_rate=1600.0,
        channels=("x", "y", "z"),
        metadata={"source": "test", "epochs": 12, "nested": {"a": [1, 2]}},
        calibration={"threshold": 3.5, "window": 64, "quantiles": [0.5, 0.99]},
    )


def gru_model(dtype=np.float64) -> Model:
    rng = np.random.default_rng(1)
    layer = gru_layer(
        rng.normal(0, 0.4, (24, 2)),
        rng.normal(0, 0.4, (24, 8)),
        rng.normal(0, 0.4, 24),
        None,
        dtype=dtype,
        reset_after=False,
        recurrent_activation="hard_sigmoid",
    )
    return Model(layers=(layer,), name="gru")


def assert_same_model(a: Model, b: Model) -> None:
    assert a.describe() == b.describe()
    assert a.dtype == b.dtype
    for x, y in zip(a._arrays(), b._arrays(), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    for field in ("name", "sample_rate", "channels", "metadata", "calibration"):
        assert getattr(a, field) == getattr(b, field), field
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert (la.reset_after, la.activation, la.recurrent_activation) == (
            lb.reset_after,
            lb.activation,
            lb.recurrent_activation,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    model = full_model(dtype)
    path = save(model, tmp_path / "m.npz")
    again = load(path)
    assert_same_model(model, again)
    assert model_sha256(model) == model_sha256(again)
    xs = np.random.default_rng(0).normal(0, 1, (200, 3)).astype(dtype)
    np.testing.assert_array_equal(model.stream().run(xs), again.stream().run(xs))


def test_gru_reset_before_and_activations_round_trip(tmp_path):
    model = gru_model()
    assert_same_model(model, load(save(model, tmp_path / "g.npz")))


def test_suffix_added_and_no_temp_files_left(tmp_path):
    path = save_native(gru_model(), tmp_path / "weights")
    assert path == tmp_path / "weights.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.npz"]


def test_failed_save_leaves_existing_file_intact(tmp_path):
    path = save(gru_model(), tmp_path / "m.npz")
    before = path.read_bytes()
    bad = gru_model().replace(calibration={"threshold": object()})
    with pytest.raises(ModelFormatError, match="not JSON-able"):
        save(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_numpy_values_in_calibration_become_json(tmp_path):
    model = gru_model().replace(
        calibration={"threshold": np.float32(2.5), "per_channel": np.array([1.0, 2.0])}
    )
    assert load(save(model, tmp_path / "m.npz")).calibration == {
        "threshold": 2.5,
        "per_channel": [1.0, 2.0],
    }


def test_sha_ignores_labels_but_not_weights():
    model = full_model()
    relabelled = model.replace(name="other", calibration={"threshold": 1.0})
    assert model_sha256(model) == model_sha256(relabelled)
    assert len(model_sha256(model)) == 64
    layer = model.layers[1]
    w = layer.w_ih.copy()
    w[0, 0] = np.nextafter(w[0, 0], np.float32(10))
    changed = model.replace(layers=(model.layers[0], sl.model.dataclasses.replace(layer, w_ih=w)))
    assert model_sha256(model) != model_sha256(changed)
    assert model_sha256(model) != model_sha256(model.astype(np.float64))


def test_model_sha256_property_is_the_native_digest(tmp_path):
    model = full_model()
    assert model.sha256 == model_sha256(model) == load(save(model, tmp_path / "m.npz")).sha256
    assert model.sha256 != model.astype(np.float64).sha256


# -- bad files ------------------------------------------------------------------------


def members(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def write_members(path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def read_meta(arrays) -> dict:
    return json.loads(arrays[META].tobytes())


def with_meta(arrays, meta) -> dict:
    arrays = dict(arrays)
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return arrays


@pytest.fixture
def saved(tmp_path):
    return save(full_model(), tmp_path / "m.npz")


def expect_error(path, pattern: str, **options) -> ModelFormatError:
    with pytest.raises(ModelFormatError, match=pattern) as info:
        load(path, **options)
    assert str(path) in str(info.value)
    return info.value


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    expect_error(path, "corrupt or truncated")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)])
    expect_error(saved, "corrupt or truncated")


def test_flipped_byte_in_tensor_data_is_refused(saved):
    data = bytearray(saved.read_bytes())
    where = data.find(b"layers.0.w_ih.npy")  # local header; the data follows it
    data[where + 200] ^= 0xFF
    saved.write_bytes(bytes(data))
    expect_error(saved, "CRC|corrupt")


def test_missing_tensor_is_named(saved):
    arrays = members(saved)
    del arrays["head.1.bias"]
    write_members(saved, arrays)
    expect_error(saved, r"missing tensor\(s\): head\.1\.bias")


def test_extra_tensor_is_named(saved):
    arrays = members(saved)
    arrays["layers.1.w_hr"] = np.zeros((3, 10), np.float32)
    write_members(saved, arrays)
    expect_error(saved, r"unexpected tensor\(s\): layers\.1\.w_hr")


def test_wrong_shape_names_tensor_expected_and_got(saved):
    arrays = members(saved)
    arrays["layers.1.w_hh"] = np.zeros((40, 11), np.float32)
    write_members(saved, arrays)
    expect_error(saved, r"tensor layers\.1\.w_hh: expected shape \(40, 10\), got \(40, 11\)")


def test_architecture_inconsistent_with_tensors(saved):
    arrays = members(saved)
    meta = read_meta(arrays)
    meta["architecture"]["layers"][1]["hidden_size"] = 9
    expect = r"tensor layers\.1\.w_ih: expected shape \(36, 5\), got \(40, 5\)"
    write_members(saved, with_meta(arrays, meta))
    expect_error(saved, expect)


def test_dtype_mismatch_is_refused(saved):
    arrays = members(saved)
    arrays["head.0.bias"] = arrays["head.0.bias"].astype(np.float64)
    write_members(saved, arrays)
    expect_error(saved, r"tensor head\.0\.bias: expected dtype <f4, got <f8")


def test_big_endian_tensor_is_refused(saved):
    arrays = members(saved)
    arrays["head.0.bias"] = arrays["head.0.bias"].astype(">f4")
    write_members(saved, arrays)
    expect_error(saved, r"head\.0\.bias: expected dtype <f4, got >f4")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_is_named(saved, bad):
    arrays = members(saved)
    arrays["layers.0.w_hr"][2, 3] = bad
    write_members(saved, arrays)
    expect_error(saved, r"tensor layers\.0\.w_hr: 1 non-finite value")


def test_tampered_weight_fails_sha(saved):
    arrays = members(saved)
    arrays["layers.0.b_ih"][0] += 0.5
    write_members(saved, arrays)
    expect_error(saved, "sha256 mismatch")


def test_tampered_activation_fails_sha(saved):
    arrays = members(saved)
    meta = read_meta(arrays)
    meta["architecture"]["head"][0]["activation"] = "tanh"
    write_members(saved, with_meta(arrays, meta))
    expect_error(saved, "sha256 mismatch")


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_version_is_refused(saved, version):
    arrays = members(saved)
    meta = read_meta(arrays)
    meta["version"] = version
    write_members(saved, with_meta(arrays, meta))
    expect_error(
        saved,
        re.escape(f"unknown native format version {version!r} (this streamlstm reads version 1)"),
    )


def test_other_format_name_is_refused(saved):
    arrays = members(saved)
    meta = read_meta(arrays)
    meta["format"] = "something-else"
    write_members(saved, with_meta(arrays, meta))
    expect_error(saved, "format is 'something-else'")


def test_plain_npz_without_meta_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, w=np.zeros(3))
    expect_error(path, "no __meta__ entry")


def test_meta_not_json_is_refused(saved):
    arrays = members(saved)
    arrays[META] = np.frombuffer(b"\xff{not json", np.uint8)
    write_members(saved, arrays)
    expect_error(saved, "not UTF-8 JSON")


def test_pickled_object_array_is_never_loaded(saved):
    arrays = members(saved)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, evil=np.array([{"a": 1}], dtype=object))
    saved.write_bytes(buffer.getvalue())
    # Refused from its .npy header, before any member is parsed.
    expect_error(saved, r"member 'evil' holds Python objects")


def test_oversize_member_refused_from_zip_directory(saved):
    expect_error(
        saved,
        r"member 'layers\.0\.w_ih' declares \d+ bytes, over the 100-byte limit",
        max_tensor_bytes=100,
    )


def test_zip_bomb_member_refused_before_reading(tmp_path):
    # 64 MiB of zeros deflates to ~64 KiB; with a 1 MiB limit it must be refused from the
    # zip directory alone, not after inflating it.
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("__meta__.npy", b"")
        archive.writestr("layers.0.w_ih.npy", bytes(64 << 20))
    assert path.stat().st_size < 1 << 20
    expect_error(path, "over the 1048576-byte limit", max_tensor_bytes=1 << 20)


def test_non_npy_member_is_refused(saved):
    with zipfile.ZipFile(saved, "a") as archive:
        archive.writestr("notes.txt", b"hello")
    expect_error(saved, "unexpected member 'notes.txt'")


def test_model_validation_errors_are_wrapped(saved):
    arrays = members(saved)
    arrays["input_norm.std"][1] = -1.0
    meta = read_meta(arrays)
    from streamlstm.formats.native import _content_sha256  # re-sign so only validation fails

    meta["sha256"] = _content_sha256(
        meta["architecture"], {k: v for k, v in arrays.items() if k != META}
    )
    write_members(saved, with_meta(arrays, meta))
    expect_error(saved, r"input_norm\.std: every entry must be > 0")


def test_load_native_directly_and_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        load_native(tmp_path / "absent.npz")
    with pytest.raises(ModelFormatError, match="no such file"):
        load(tmp_path / "absent.npz")


def test_object_array_in_place_of_a_tensor_is_not_unpickled(saved):
    arrays = members(saved)
    arrays["head.0.bias"] = np.array([{"a": 1}] * 6, dtype=object)
    write_members(saved, arrays)
    expect_error(saved, r"member 'head\.0\.bias' holds Python objects \(dtype object\)")


def test_npy_header_claiming_more_data_than_the_member_holds(saved):
    # NumPy would allocate the claimed 4 TB before reading: refused from the header alone.
    arrays = members(saved)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    body = buffer.getvalue() + arrays["head.0.bias"].tobytes()
    with zipfile.ZipFile(saved, "w") as archive:
        for name, array in arrays.items():
            if name == "head.0.bias":
                archive.writestr(name + ".npy", body)
            else:
                item = io.BytesIO()
                np.save(item, array)
                archive.writestr(name + ".npy", item.getvalue())
    expect_error(
        saved,
        r"member 'head\.0\.bias': header claims shape \(1000000000000,\) "
        r"\(4000000000000 bytes\) but the member holds \d+ bytes",
    )


def test_random_damage_gives_model_format_error_or_an_identical_model(saved):
    """Byte flips anywhere in the file: either refused with ModelFormatError or harmless."""
    original = load(saved)
    data = saved.read_bytes()
    rng = np.random.default_rng(2024)
    outcomes = {"refused": 0, "harmless": 0}
    for _ in range(150):
        damaged = bytearray(data)
        for where in rng.integers(0, len(data), rng.integers(1, 4)):
            damaged[where] ^= int(rng.integers(1, 256))
        saved.write_bytes(bytes(damaged))
        try:
            model = load(saved)
        except ModelFormatError:
            outcomes["refused"] += 1
            continue
        # A flip in bytes nothing reads (e.g. zip timestamps) may load: the model must be intact.
        assert_same_model(original, model)
        outcomes["harmless"] += 1
    assert outcomes["refused"] > 100
