"""A small ONNX graph written with ``onnx.helper``, with knobs for breaking it in tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
helper, numpy_helper = onnx.helper, onnx.numpy_helper

#: hidden units, input width and output width of the graph
HIDDEN, WIDTH, OUT = 4, 3, 2


def lstm_graph(
    *,
    w: np.ndarray | None = None,
    lstm_attributes: dict[str, Any] | None = None,
    extra_inputs: tuple[str, ...] = (),
    before: list[Any] | None = None,
    x_into_lstm: str = "x",
    head: list[Any] | None = None,
    external: dict[str, str] | None = None,
) -> Any:
    """Input (T, 1, 3) -> LSTM(4) -> Squeeze -> MatMul+Add -> (T, 1, 2), editable for tests."""
    rng = np.random.default_rng(3)
    tensors = {
        "W": w if w is not None else rng.normal(0, 0.5, (1, 4 * HIDDEN, WIDTH)),
        "R": rng.normal(0, 0.5, (1, 4 * HIDDEN, HIDDEN)),
        "B": rng.normal(0, 0.5, (1, 8 * HIDDEN)),
        "K": rng.normal(0, 0.5, (HIDDEN, OUT)),
        "b": rng.normal(0, 0.5, OUT),
    }
    initializers = [
        numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in tensors.items()
    ]
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    for tensor in initializers:
        if external and tensor.name in external:
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", external[tensor.name]
            tensor.ClearField("raw_data")
    nodes = list(before or [])
    nodes.append(
        helper.make_node(
            "LSTM",
            [x_into_lstm, "W", "R", "B", *extra_inputs],
            ["Y"],
            name="lstm0",
            hidden_size=HIDDEN,
            **(lstm_attributes or {}),
        )
    )
    nodes.append(helper.make_node("Squeeze", ["Y", "axes"], ["h"], name="squeeze"))
    nodes += (
        head
        if head is not None
        else [
            helper.make_node("MatMul", ["h", "K"], ["m"], name="dense_mm"),
            helper.make_node("Add", ["m", "b"], ["y"], name="dense_add"),
        ]
    )
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["T", 1, WIDTH])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
