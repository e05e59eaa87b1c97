"""PyTorch import: key prefixes, checkpoints, heads, options, and every refusal's message."""

from __future__ import annotations

import re

import numpy as np
import pytest
from torch_nets import make_net, reference, save_state_dict, torch

from streamlstm.errors import ModelFormatError, ShapeError
from streamlstm.formats import load
from streamlstm.formats._safetensors import write_safetensors

nn = torch.nn


def numpy_state(module, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}


def outputs(model, xs) -> np.ndarray:
    return model.stream().run(xs)


def torch_lstm_outputs(lstm, xs, head=None) -> np.ndarray:
    with torch.inference_mode():
        y, _ = lstm(torch.from_numpy(xs)[None])
        if head is not None:
            y = head(y)
    return y[0].numpy()


XS = np.random.default_rng(5).normal(0, 1, (50, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "prefix", ["", "lstm.", "rnn.", "gru.", "module.", "module.lstm.", "encoder.cell."]
)
def test_prefixes_are_detected(tmp_path, prefix):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 8, 2, batch_first=True)
    path = tmp_path / "w.safetensors"
    write_safetensors(path, numpy_state(lstm, prefix))
    model = load(path)
    assert model.metadata["prefix"] == prefix
    assert model.metadata["source"] == "pytorch-safetensors"
    np.testing.assert_allclose(outputs(model, XS), torch_lstm_outputs(lstm, XS), atol=1e-6)


def test_explicit_prefix_chooses_among_several(tmp_path):
    torch.manual_seed(0)
    a, b = nn.LSTM(3, 8, batch_first=True), nn.GRU(3, 6, batch_first=True)
    path = tmp_path / "two.safetensors"
    write_safetensors(path, {**numpy_state(a, "enc."), **numpy_state(b, "aux.")})
    with pytest.raises(
        ModelFormatError,
        match=r"several recurrent modules found \('aux\.', "
        r"'enc\.'\); pass prefix=",
    ):
        load(path)
    with pytest.raises(ModelFormatError, match="neither the recurrent module"):
        load(path, prefix="enc")  # aux.* is left over
    model = load(path, prefix="enc", strict=False)
    np.testing.assert_allclose(outputs(model, XS), torch_lstm_outputs(a, XS), atol=1e-6)
    assert load(path, prefix="aux.", strict=False).layers[0].kind == "gru"
    with pytest.raises(ModelFormatError, match=r"no recurrent weights under prefix='dec\.'"):
        load(path, prefix="dec")


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_dicts(tmp_path, key):
    net = make_net("gru", 2, 8, head="fc")
    path = tmp_path / "ckpt.pth"
    torch.save({key: net.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    model = load(path)
    np.testing.assert_allclose(outputs(model, XS), reference(net, XS), atol=1e-6)


def test_bare_state_dict_pt_with_head_and_metadata_options(tmp_path):
    net = make_net("lstm", 1, 16, proj=4, head="fc")
    pt, _ = save_state_dict(net, tmp_path)
    model = load(pt, name="pump", sample_rate=400, channels=["x", "y", "z"], metadata={"run": "r7"})
    assert (model.name, model.sample_rate, model.channels) == ("pump", 400, ("x", "y", "z"))
    assert model.metadata["run"] == "r7" and model.metadata["source"] == "pytorch"
    assert re.fullmatch(r"[0-9a-f]{64}", model.metadata["file_sha256"])
    assert "file_metadata" not in model.metadata
    assert model.metadata["head_prefixes"] == ["fc."]
    assert model.describe() == "LSTM(3->16, proj=4) -> Dense(4->3, linear)"


def test_normalisation_options(tmp_path):
    net = make_net("lstm", 1, 8, head="fc")
    _, st = save_state_dict(net, tmp_path)
    mean, std = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 4.0])
    out_mean, out_std = np.array([10.0, 0.0, -1.0]), np.array([3.0, 1.0, 0.1])
    model = load(st, input_mean=mean, input_std=std, output_mean=out_mean, output_std=out_std)
    raw = XS * std + mean  # sensor units that normalise back to XS
    want = reference(net, XS) * out_std + out_mean
    np.testing.assert_allclose(outputs(model, raw.astype(np.float32)), want, atol=2e-5)
    with pytest.raises(ModelFormatError, match="input_mean and input_std go together"):
        load(st, input_mean=mean)
    with pytest.raises(ModelFormatError, match=r"input_norm\.mean: expected shape \(3,\)"):
        load(st, input_mean=[0, 0], input_std=[1, 1])
    with pytest.raises(ModelFormatError, match="output_mean/output_std must be numbers"):
        load(st, output_mean=["a", "b", "c"], output_std=[1, 1, 1])
    with pytest.raises(ModelFormatError, match=r"output_norm\.std: every entry must be > 0"):
        load(st, output_mean=[0, 0, 0], output_std=[1, 0, 1])
    with pytest.raises(ModelFormatError, match="sample_rate must be a positive number"):
        load(st, sample_rate=-5)


def test_float64_and_half_precision_sources(tmp_path):
    net = make_net("gru", 1, 8, dtype=np.float64)
    state = numpy_state(net)
    path = tmp_path / "w.safetensors"
    write_safetensors(path, state)
    model = load(path, dtype="float64")
    assert model.dtype == np.float64
    xs = XS.astype(np.float64)
    np.testing.assert_allclose(outputs(model, xs), reference(net, xs), atol=1e-12)
    write_safetensors(path, {k: v.astype(np.float16) for k, v in state.items()})
    half = load(path)
    np.testing.assert_array_equal(
        half.layers[0].w_ih, state["rnn.weight_ih_l0"].astype(np.float16).astype(np.float32)
    )
    with pytest.raises(ModelFormatError, match="dtype must be float32 or float64"):
        load(path, dtype=np.float16)


def test_bfloat16_safetensors_from_the_safetensors_library(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    lstm = nn.LSTM(3, 8, batch_first=True).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_file(lstm.state_dict(), str(path), metadata={"trained_on": "pump-7"})
    model = load(path)
    assert model.metadata["file_metadata"] == {"trained_on": "pump-7"}
    np.testing.assert_array_equal(model.layers[0].w_hh, lstm.weight_hh_l0.detach().float().numpy())


def test_no_bias(tmp_path):
    net = make_net("lstm", 2, 8, bias=False)
    _, st = save_state_dict(net, tmp_path)
    model = load(st)
    assert all(not layer.b_ih.any() and not layer.b_hh.any() for layer in model.layers)
    np.testing.assert_allclose(outputs(model, XS), reference(net, XS), atol=1e-6)


# -- heads ----------------------------------------------------------------------------


def test_sequential_head_needs_head_activation(tmp_path):
    net = make_net("lstm", 1, 8, head="mlp")
    pt, _ = save_state_dict(net, tmp_path)
    with pytest.raises(
        ModelFormatError,
        match=r"the head has 2 Linear layers \(head\.0\., "
        r"head\.2\.\).*pass head_activation=",
    ):
        load(pt)
    with pytest.raises(ModelFormatError, match="head_activation must be one of"):
        load(pt, head_activation="gelu")
    model = load(pt, head_activation="tanh")
    np.testing.assert_allclose(outputs(model, XS), reference(net, XS), atol=1e-6)


def test_adjacent_sequential_linears_need_no_activation(tmp_path):
    torch.manual_seed(0)
    lstm, head = nn.LSTM(3, 8, batch_first=True), nn.Sequential(nn.Linear(8, 5), nn.Linear(5, 2))
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {**numpy_state(lstm, "lstm."), **numpy_state(head, "head.")})
    np.testing.assert_allclose(
        outputs(load(path), XS), torch_lstm_outputs(lstm, XS, head), atol=1e-6
    )


def test_head_prefix_list_and_ambiguous_heads(tmp_path):
    torch.manual_seed(0)
    lstm, fc1, fc2 = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 6), nn.Linear(6, 2)
    path = tmp_path / "w.safetensors"
    write_safetensors(
        path, {**numpy_state(lstm, "lstm."), **numpy_state(fc1, "fc."), **numpy_state(fc2, "out.")}
    )
    with pytest.raises(
        ModelFormatError,
        match=r"several possible heads \('fc\.', 'out\.'\); "
        "pass head_prefix=",
    ):
        load(path)
    with pytest.raises(ModelFormatError, match="pass head_activation="):
        load(path, head_prefix=["fc", "out"])
    model = load(path, head_prefix=["fc.", "out."], head_activation="relu")
    want = torch_lstm_outputs(lstm, XS, nn.Sequential(fc1, nn.ReLU(), fc2))
    np.testing.assert_allclose(outputs(model, XS), want, atol=1e-6)
    no_head = load(path, head_prefix="", strict=False)
    assert not no_head.head
    with pytest.raises(ModelFormatError, match=r"no Linear weights under head_prefix 'dense\.'"):
        load(path, head_prefix="dense")


def test_head_shape_mismatch(tmp_path):
    torch.manual_seed(0)
    lstm, fc = nn.LSTM(3, 8, batch_first=True), nn.Linear(7, 2)
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {**numpy_state(lstm, "lstm."), **numpy_state(fc, "fc.")})
    with pytest.raises(
        ModelFormatError,
        match=r"fc\.weight: expected shape \(out, 8\) .* "
        r"got \(2, 7\)",
    ):
        load(path)


def test_head_next_to_a_nested_module(tmp_path):
    net = make_net("gru", 1, 8, head="fc")
    path = tmp_path / "w.safetensors"
    write_safetensors(path, numpy_state(net, "module."))
    model = load(path)
    assert model.metadata["prefix"] == "module.rnn."
    assert model.metadata["head_prefixes"] == ["module.fc."]
    np.testing.assert_allclose(outputs(model, XS), reference(net, XS), atol=1e-6)


# -- refusals -------------------------------------------------------------------------


def test_bidirectional_loads_for_windows_and_is_refused_as_a_stream(tmp_path):
    lstm = nn.LSTM(3, 8, bidirectional=True)
    path = tmp_path / "bi.pt"
    torch.save(lstm.state_dict(), path)
    model = load(path)
    assert model.layers[0].backward is not None and model.output_size == 16
    with pytest.raises(ShapeError, match=r"bidirectional.*future samples.*model\.windows\(\)"):
        model.stream()


def test_pickle_bearing_pt_is_refused(tmp_path):
    path = tmp_path / "whole_module.pt"
    torch.save(make_net("lstm", 1, 8), path)  # the whole nn.Module: needs unpickling code
    with pytest.raises(
        ModelFormatError,
        match=r"refused: the file holds pickled Python objects "
        r"besides tensors \(it names "
        r"torch_nets\.RecurrentNet\).*weights_only",
    ):
        load(path)


class _Payload:
    """Pickles to a call of ``Path.touch(marker)``: running it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"lstm.weight_ih_l0": torch.zeros(32, 3), "payload": _Payload(marker)}, path)
    with pytest.raises(ModelFormatError, match="refused: the file holds pickled Python objects"):
        load(path)
    assert not marker.exists()


def test_non_state_dict_pt_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ModelFormatError, match="holds a list, expected a state_dict"):
        load(path)
    torch.save({"weight_ih_l0": torch.zeros(32, 3), "note": "text"}, path)
    with pytest.raises(ModelFormatError, match="entry 'note' is a str, not a tensor"):
        load(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_files_are_refused(tmp_path, suffix):
    net = make_net("lstm", 1, 8)
    pt, st = save_state_dict(net, tmp_path)
    path = pt if suffix == ".pt" else st
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match=re.escape(str(path))):
        load(path)


def test_not_a_recurrent_state_dict(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, numpy_state(nn.Linear(3, 2), "fc."))
    with pytest.raises(ModelFormatError, match=r"no nn\.LSTM/nn\.GRU weights found"):
        load(path)


def test_kind_option_is_checked_and_bad_gate_rows_explained(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, numpy_state(nn.GRU(3, 8), "gru."))
    assert load(path, kind="gru").layers[0].kind == "gru"
    with pytest.raises(ModelFormatError, match=r"kind='lstm' was given but .* is a GRU"):
        load(path, kind="lstm")
    with pytest.raises(ModelFormatError, match=r"kind must be one of .*'rnn_tanh'"):
        load(path, kind="rnn")
    with pytest.raises(ModelFormatError, match=r"kind='rnn_tanh' was given but .* is a GRU"):
        load(path, kind="rnn_tanh")
    state = numpy_state(nn.GRU(3, 8), "gru.")
    state["gru.weight_ih_l0"] = np.zeros((20, 3), np.float32)
    write_safetensors(path, state)
    with pytest.raises(ModelFormatError, match="20 rows and the hidden size is 8: neither"):
        load(path)


def test_missing_and_mismatched_layer_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    state = numpy_state(nn.LSTM(3, 8, 2), "lstm.")
    broken = {k: v for k, v in state.items() if k != "lstm.weight_hh_l1"}
    write_safetensors(path, broken)
    with pytest.raises(ModelFormatError, match=r"missing lstm\.weight_hh_l1"):
        load(path)
    broken = {k: v for k, v in state.items() if k != "lstm.bias_hh_l0"}
    write_safetensors(path, broken)
    with pytest.raises(ModelFormatError, match=r"only one of lstm\.bias_ih_l0, lstm\.bias_hh_l0"):
        load(path)
    broken = dict(state, **{"lstm.weight_ih_l1": np.zeros((32, 5), np.float32)})
    write_safetensors(path, broken)
    with pytest.raises(ModelFormatError, match="expects 5 inputs but layer 0 outputs 8"):
        load(path)
    broken = dict(state, **{"lstm.bias_ih_l1": np.zeros(31, np.float32)})
    write_safetensors(path, broken)
    with pytest.raises(ModelFormatError, match=r"b_ih: expected shape \(32,\), got \(31,\)"):
        load(path)
    broken = {k.replace("_l1", "_l2"): v for k, v in state.items()}
    write_safetensors(path, broken)
    with pytest.raises(ModelFormatError, match=r"layer indices \[0, 2\]"):
        load(path)


def test_non_finite_weights_are_named(tmp_path):
    state = numpy_state(nn.LSTM(3, 8), "lstm.")
    state["lstm.weight_hh_l0"][3, 1] = np.nan
    path = tmp_path / "w.safetensors"
    write_safetensors(path, state)
    with pytest.raises(ModelFormatError, match=r"lstm\.weight_hh_l0: 1 non-finite value"):
        load(path)


def test_leftover_keys_are_listed_unless_not_strict(tmp_path):
    state = {
        **numpy_state(nn.LSTM(3, 8), "lstm."),
        "embedding.weight": np.zeros((4, 3)),
        "bn.running_mean": np.zeros(3),
    }
    path = tmp_path / "w.safetensors"
    write_safetensors(path, state)
    with pytest.raises(
        ModelFormatError,
        match=r"neither the recurrent module \(lstm\.\) nor "
        r"its head: bn\.running_mean, embedding\.weight",
    ):
        load(path)
    assert load(path, strict=False).input_size == 3
