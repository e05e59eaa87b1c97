"""``streamlstm inspect FILE``: what a weight file holds, without running it.

Prints the architecture, every tensor's shape, the parameter count, the source format,
the file's sha256 and the weights' content hash (the native format's ``sha256``, which
names the network in alerts), normalisation, calibration and metadata; ``--json`` gives
the same as one JSON object.

Exit codes: 0 described; 2 bad usage or a file that cannot be loaded (reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import StreamLSTMError
from ..formats import load
from ..formats._model_build import file_sha256
from ..model import Model, Normalization
from ..window_spec import WindowSpec
from .convert import add_model_arguments, loader_options

#: How a suffix's format is named in the report.
FORMAT_NAMES = {
    ".npz": "native",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".safetensors": "safetensors",
    ".keras": "keras",
    ".h5": "keras-weights-h5",
    ".onnx": "onnx",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="weight file: .npz .pt .pth .safetensors .keras .weights.h5 .onnx"
    )
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _norm(norm: Normalization | None) -> dict[str, list[float]] | None:
    return None if norm is None else {"mean": norm.mean.tolist(), "std": norm.std.tolist()}


def describe(model: Model, path: Path) -> dict[str, Any]:
    """A JSON-able description of ``model``, loaded from ``path``."""
    from ..formats.native import model_sha256

    suffix = ".h5" if path.name.endswith(".h5") else path.suffix.lower()
    layers = []
    for layer in model.layers:
        shapes = {
            "w_ih": list(layer.w_ih.shape),
            "w_hh": list(layer.w_hh.shape),
            "b_ih": list(layer.b_ih.shape),
            "b_hh": list(layer.b_hh.shape),
        }
        if layer.w_hr is not None:
            shapes["w_hr"] = list(layer.w_hr.shape)
        entry = {
            "kind": layer.kind,
            "input_size": layer.input_size,
            "hidden_size": layer.hidden_size,
            "output_size": layer.output_size,
            "activation": layer.activation,
            "recurrent_activation": layer.recurrent_activation,
            "shapes": shapes,
        }
        if layer.kind == "gru":
            entry["reset_after"] = layer.reset_after
        if layer.backward is not None:
            entry["bidirectional"] = True
        layers.append(entry)
    head = [
        {
            "input_size": d.weight.shape[1],
            "output_size": d.weight.shape[0],
            "activation": d.activation,
            "shapes": {"weight": list(d.weight.shape), "bias": list(d.bias.shape)},
        }
        for d in model.head
    ]
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "file_sha256": file_sha256(path),
        "format": FORMAT_NAMES.get(suffix, suffix),
        "name": model.name,
        "architecture": model.describe(),
        "dtype": model.dtype.name,
        "input_size": model.input_size,
        "output_size": model.output_size,
        "state_size": model.state_size,
        "parameter_count": model.parameter_count,
        "weights_sha256": model_sha256(model),
        "layers": layers,
        "head": head,
        "input_norm": _norm(model.input_norm),
        "output_norm": _norm(model.output_norm),
        "sample_rate": model.sample_rate,
        "channels": list(model.channels),
        "calibration": None if model.calibration is None else dict(model.calibration),
        "window": None if model.window is None else model.window.to_metadata(),
        "streaming": model.streaming_refusal or "yes",
        "metadata": dict(model.metadata),
    }


def _text(info: dict[str, Any]) -> str:
    lines = [
        f"file          {info['file']} ({info['file_bytes']} bytes, {info['format']})",
        f"file sha256   {info['file_sha256']}",
        f"weights hash  {info['weights_sha256']}",
        f"name          {info['name']}",
        f"architecture  {info['architecture']}",
        f"dtype         {info['dtype']}, {info['parameter_count']} parameters, "
        f"state {info['state_size']} per stream",
        f"input/output  {info['input_size']} -> {info['output_size']}",
        f"sample rate   {info['sample_rate'] or 'not set'}",
        f"channels      {', '.join(info['channels']) or 'not named'}",
    ]
    for index, layer in enumerate(info["layers"]):
        shapes = " ".join(f"{k}{tuple(v)}" for k, v in layer["shapes"].items())
        extra = f", reset_after={layer['reset_after']}" if "reset_after" in layer else ""
        extra += ", bidirectional" if layer.get("bidirectional") else ""
        lines.append(
            f"layers[{index}]     {layer['kind']} {layer['activation']}/"
            f"{layer['recurrent_activation']}{extra}: {shapes}"
        )
    for index, dense in enumerate(info["head"]):
        shapes = " ".join(f"{k}{tuple(v)}" for k, v in dense["shapes"].items())
        lines.append(f"head[{index}]       {dense['activation']}: {shapes}")
    for which in ("input_norm", "output_norm"):
        norm = info[which]
        lines.append(
            f"{which:<13} " + ("none" if norm is None else f"mean {norm['mean']} std {norm['std']}")
        )
    window = info["window"]
    lines.append(
        "window        "
        + ("none (a streaming model)" if window is None else WindowSpec(**window).describe())
    )
    if info["streaming"] != "yes":
        lines.append(f"streaming     no: {info['streaming']}")
    lines.append(
        "calibration   "
        + (
            "none"
            if info["calibration"] is None
            else json.dumps(info["calibration"], sort_keys=True)
        )
    )
    lines.append("metadata      " + json.dumps(info["metadata"], sort_keys=True, default=str))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        model = load(path, **loader_options(args, path))
    except TypeError as exc:
        print(f"streamlstm inspect: {path}: option not understood ({exc})", file=sys.stderr)
        return 2
    except (StreamLSTMError, ValueError) as exc:
        print(f"streamlstm inspect: {exc}", file=sys.stderr)
        return 2
    info = describe(model, path)
    print(json.dumps(info, indent=2, default=str) if args.json else _text(info))
    return 0
