"""``streamlstm convert IN OUT``: any supported weight file to the native ``.npz``.

What a file cannot say is given on the command line: the architecture of a Keras
``.weights.h5`` (``--config``), the PyTorch module to read (``--prefix``, ``--kind``,
``--head-prefix``, ``--head-activation``), and what any format may lack: name, sample
rate, channel names, input/output normalisation, dtype, and a window model's window
(``--window``, ``--hop``, ``--output``, ``--classes``, ``--final-state``: stored as its
:class:`~streamlstm.window_spec.WindowSpec`).

Exit codes: 0 written; 2 bad usage or a model that cannot be loaded (the reason is on
stderr); 1 the output could not be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StreamLSTMError
from ..formats import load, save
from ..formats.torch import KINDS
from ..model import Model, Normalization
from ..window_spec import METADATA_KEY, OUTPUTS, WindowSpec

TORCH_SUFFIXES = (".pt", ".pth", ".safetensors")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that shape how a weight file is read; shared by ``convert`` and ``inspect``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="Keras .weights.h5 only: the architecture (the model's .keras "
        "file or its config.json)",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        help="PyTorch only: the recurrent cell, checked against the shapes "
        "(required for nn.RNN: rnn_tanh or rnn_relu)",
    )
    parser.add_argument(
        "--prefix", help="PyTorch only: the recurrent module's key prefix, e.g. 'encoder.rnn.'"
    )
    parser.add_argument(
        "--head-prefix",
        action="append",
        metavar="PREFIX",
        help="PyTorch only: a Linear of the head (repeat, in order); '' for none",
    )
    parser.add_argument(
        "--head-activation",
        choices=("linear", "relu", "tanh", "sigmoid", "hard_sigmoid"),
        help="PyTorch only: activation between the head's Linear layers",
    )
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other loader option (VALUE is JSON if it parses); repeatable",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", help="weight file: .npz .pt .pth .safetensors .keras .weights.h5 .onnx"
    )
    parser.add_argument("output", help="native file to write (.npz)")
    add_model_arguments(parser)
    parser.add_argument("--name", help="model name (default: from the file)")
    parser.add_argument("--sample-rate", type=float, metavar="HZ", help="samples per second")
    parser.add_argument("--channels", metavar="A,B,C", help="input channel names")
    parser.add_argument(
        "--input-mean",
        type=_floats,
        metavar="M1,M2,..",
        help="input normalisation (x - mean) / std; with --input-std",
    )
    parser.add_argument("--input-std", type=_floats, metavar="S1,S2,..")
    parser.add_argument(
        "--output-mean",
        type=_floats,
        metavar="M1,M2,..",
        help="output de-normalisation y * std + mean; with --output-std",
    )
    parser.add_argument("--output-std", type=_floats, metavar="S1,S2,..")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="store in this precision (default: the loader's, float32)",
    )
    window = parser.add_argument_group(
        "window model",
        "run the model on windows of the last N samples, each from the zero "
        "state, as it was trained (classifiers, autoencoders, bidirectional and RNN models)",
    )
    window.add_argument("--window", type=int, metavar="N", help="window length in samples")
    window.add_argument(
        "--hop",
        type=int,
        metavar="K",
        help="evaluate a window every K samples (default: N, no overlap)",
    )
    window.add_argument(
        "--output",
        choices=OUTPUTS,
        dest="window_output",
        help="the last step through the head, every step (autoencoder), or "
        "softmax / log-softmax class probabilities (default: last)",
    )
    window.add_argument("--classes", metavar="A,B,C", help="class names, one per output")
    window.add_argument(
        "--final-state",
        action="store_true",
        default=None,
        help="a per-window output reads the top layer's final state: for a "
        "bidirectional layer the backward direction at the window's "
        "first step (PyTorch h_n, Keras return_sequences=False), not "
        "at its last",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")


def loader_options(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Keyword arguments for :func:`streamlstm.formats.load` of ``path`` from the shared options.

    Raises ``ValueError`` for an option that does not apply to the file's format.
    """
    from .step import parse_options

    options = parse_options(args.option)
    torch_only = {
        "kind": args.kind,
        "prefix": args.prefix,
        "head_prefix": args.head_prefix,
        "head_activation": args.head_activation,
    }
    given = {k: v for k, v in torch_only.items() if v is not None}
    if given and path.suffix.lower() not in TORCH_SUFFIXES:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags}: only for PyTorch files ({', '.join(TORCH_SUFFIXES)})")
    if "head_prefix" in given:
        prefixes = given["head_prefix"]
        given["head_prefix"] = "" if prefixes == [""] else prefixes
    if args.config is not None:
        if not path.name.endswith(".h5"):
            raise ValueError("--config: only for Keras .weights.h5 files")
        options["config"] = args.config
    window_aware = path.suffix.lower() in (".onnx", ".keras") or path.name.endswith(".h5")
    if window_aware and getattr(args, "window", None) is not None:
        # ONNX and Keras window models are read with their window (the output mode and the
        # checks depend on the graph).
        options.update(window=args.window, hop=args.hop)
    return {**options, **given}


def _norm(
    mean: list[float] | None, std: list[float] | None, which: str, dtype: np.dtype
) -> Normalization | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"--{which}-mean and --{which}-std go together")
    return Normalization(np.asarray(mean, dtype), np.asarray(std, dtype))


def apply_overrides(model: Model, args: argparse.Namespace) -> Model:
    """The model with the command line's name, rate, channels, normalisation and dtype."""
    if args.dtype:
        model = model.astype(args.dtype)
    changes: dict[str, Any] = {}
    if args.name:
        changes["name"] = args.name
    if args.sample_rate is not None:
        if not args.sample_rate > 0:
            raise ValueError("--sample-rate must be > 0")
        changes["sample_rate"] = args.sample_rate
    if args.channels:
        changes["channels"] = tuple(c.strip() for c in args.channels.split(","))
    for which in ("input", "output"):
        norm = _norm(
            getattr(args, f"{which}_mean"), getattr(args, f"{which}_std"), which, model.dtype
        )
        if norm is not None:
            changes[f"{which}_norm"] = norm
    spec = _window_spec(model, args)
    if spec is not None:
        changes["metadata"] = {**model.metadata, METADATA_KEY: spec.to_metadata()}
    return model.replace(**changes) if changes else model


def _window_spec(model: Model, args: argparse.Namespace) -> WindowSpec | None:
    """The window the command line declares (over the model's own), or None if it says none."""
    given = {
        "length": args.window,
        "hop": args.hop,
        "output": args.window_output,
        "classes": None
        if args.classes is None
        else tuple(c.strip() for c in args.classes.split(",")),
        "final_state": getattr(args, "final_state", None),
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    current = model.window
    if current is None:
        if "length" not in given:
            raise ValueError(
                "--hop, --output, --classes and --final-state describe a window: give --window too"
            )
        given.setdefault("hop", given["length"])
        return WindowSpec(**given)
    return WindowSpec(**{**current.to_metadata(), **given})


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() != ".npz":
        print(f"streamlstm convert: {output}: the native format is .npz", file=sys.stderr)
        return 2
    if output.exists() and not args.force:
        print(f"streamlstm convert: {output} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        model = load(args.input, **loader_options(args, Path(args.input)))
        model = apply_overrides(model, args)
    except TypeError as exc:  # a --option the format's loader does not take
        print(f"streamlstm convert: {args.input}: option not understood ({exc})", file=sys.stderr)
        return 2
    except (StreamLSTMError, ValueError) as exc:
        print(f"streamlstm convert: {exc}", file=sys.stderr)
        return 2
    try:
        written = save(model, output)
    except (OSError, StreamLSTMError) as exc:
        print(f"streamlstm convert: cannot write {output}: {exc}", file=sys.stderr)
        return 1
    print(f"{written}: {model.describe()}, {model.parameter_count} parameters, {model.dtype}")
    if model.window is None and model.streaming_refusal is not None:
        print(
            f"streamlstm convert: note: {model.streaming_refusal}; give it a window "
            "(--window N --hop K) to run it",
            file=sys.stderr,
        )
    return 0
