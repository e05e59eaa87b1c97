"""How a window model was trained to be run: window length, hop, initial state, output.

A *window model* is evaluated on fixed windows of the last ``length`` samples, each from
the zero state, every ``hop`` samples, as it was trained; it is not a next-step predictor
whose state is carried forever. The spec travels in the model's metadata under
``"window"`` (so the native format stores it with no format change) and is read back
into this typed dataclass by :attr:`streamlstm.Model.window`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import ShapeError

#: The key in :attr:`streamlstm.Model.metadata` that holds the spec.
METADATA_KEY = "window"
#: What a window evaluation returns: ``last``: the last step through the head (one row per
#: window); ``every``: every step through the head (an autoencoder's reconstruction, one
#: ``(length, O)`` block per window); ``probabilities`` / ``log_probabilities``: the last
#: step through the head, then softmax / log-softmax over the classes.
OUTPUTS = ("last", "every", "probabilities", "log_probabilities")
INITIAL_STATES = ("zero",)
#: Largest window accepted (a ring of this many samples is kept per sensor).
MAX_LENGTH = 1 << 16


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Window length ``length`` (W), hop ``hop`` (K), initial state, output mode and classes.

    A window ends at every sample whose count since the sensor's first sample is
    ``length + j * hop`` for ``j >= 0``; ``hop > length`` leaves gaps between windows.
    ``classes`` names the outputs of a classifier (``probabilities`` or
    ``log_probabilities``; also allowed with ``last`` for raw logits).

    ``final_state``: a per-window output reads the top layer's *final state* instead of its
    output at the last step; they differ only for a bidirectional layer, whose final state
    is its forward direction's output at the last step next to its backward direction's
    at the first step (the backward pass ends there), as Keras
    ``Bidirectional(return_sequences=False)`` and PyTorch's ``h_n`` give it.
    ``encoder_layers``: ``n > 0`` makes the first ``n`` recurrent layers an encoder: the
    ``n``-th layer's final state is fed to every step of layer ``n + 1`` (Keras ``LSTM ->
    RepeatVector(W) -> LSTM`` autoencoders); 0 (default) for none.
    """

    length: int
    hop: int
    output: str = "last"
    classes: tuple[str, ...] = ()
    initial_state: str = "zero"
    final_state: bool = False
    encoder_layers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        for name in ("length", "hop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ShapeError(f"window.{name}: expected a positive integer, got {value!r}")
        if self.length > MAX_LENGTH:
            raise ShapeError(f"window.length: {self.length} is over the limit of {MAX_LENGTH}")
        if self.output not in OUTPUTS:
            raise ShapeError(f"window.output: {self.output!r} is not one of {OUTPUTS}")
        if self.initial_state not in INITIAL_STATES:
            raise ShapeError(
                f"window.initial_state: {self.initial_state!r} is not supported "
                f"(one of {INITIAL_STATES}: each window starts from the zero "
                "state, as in training)"
            )
        if not all(isinstance(c, str) and c.strip() for c in self.classes):
            raise ShapeError(f"window.classes: expected non-empty names, got {self.classes!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ShapeError(f"window.classes: names repeat in {self.classes!r}")
        if self.classes and self.output == "every":
            raise ShapeError(
                "window.classes: class names need a per-window output "
                "(last, probabilities or log_probabilities), not 'every'"
            )
        if not isinstance(self.final_state, bool):
            raise ShapeError(
                f"window.final_state: expected true or false, got {self.final_state!r}"
            )
        if self.final_state and self.per_step:
            raise ShapeError(
                "window.final_state: a final state is one vector per window; "
                "output 'every' reads every step"
            )
        encoder = self.encoder_layers
        if isinstance(encoder, bool) or not isinstance(encoder, int) or encoder < 0:
            raise ShapeError(f"window.encoder_layers: expected an integer >= 0, got {encoder!r}")

    @property
    def per_step(self) -> bool:
        """True if a window's output has one row per step (``every``)."""
        return self.output == "every"

    def check_model(self, output_size: int, layer_count: int) -> None:
        """Raise :class:`ShapeError` unless the spec fits a model of ``output_size`` outputs
        and ``layer_count`` recurrent layers (class names, classes, the encoder)."""
        if self.encoder_layers >= layer_count:
            raise ShapeError(
                f"window.encoder_layers: {self.encoder_layers} encoder layer(s) "
                f"leave no decoder layer in a model of {layer_count}"
            )
        if self.classes and len(self.classes) != output_size:
            raise ShapeError(
                f"window.classes: {len(self.classes)} names for a model with {output_size} outputs"
            )
        if self.output in ("probabilities", "log_probabilities") and output_size < 2:
            raise ShapeError(
                f"window.output={self.output!r} needs at least 2 outputs (classes), "
                f"the model has {output_size}"
            )

    def to_metadata(self) -> dict[str, Any]:
        """The JSON object stored under ``metadata["window"]``; ``final_state`` and
        ``encoder_layers`` only when set, so files without them read as before (and a
        reader that does not know them refuses the file rather than misreading it)."""
        out: dict[str, Any] = {
            "length": self.length,
            "hop": self.hop,
            "output": self.output,
            "classes": list(self.classes),
            "initial_state": self.initial_state,
        }
        if self.final_state:
            out["final_state"] = True
        if self.encoder_layers:
            out["encoder_layers"] = self.encoder_layers
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> WindowSpec | None:
        """The spec stored in ``metadata`` (None if there is none); malformed -> ShapeError."""
        raw = metadata.get(METADATA_KEY)
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ShapeError(f"metadata.window: expected a JSON object, got {type(raw).__name__}")
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ShapeError(f"metadata.window: unknown key(s) {sorted(unknown)}")
        for key in ("length", "hop"):
            if key not in raw:
                raise ShapeError(f"metadata.window: missing {key!r}")
        classes = raw.get("classes", [])
        if not isinstance(classes, (list, tuple)):
            raise ShapeError(f"metadata.window.classes: expected a list, got {classes!r}")
        return cls(
            length=raw["length"],
            hop=raw["hop"],
            output=raw.get("output", "last"),
            classes=tuple(classes),
            initial_state=raw.get("initial_state", "zero"),
            final_state=raw.get("final_state", False),
            encoder_layers=raw.get("encoder_layers", 0),
        )

    def describe(self) -> str:
        """One line, e.g. ``window 128, hop 32, zero state, probabilities (normal, ball)``."""
        classes = f" ({', '.join(self.classes)})" if self.classes else ""
        extra = ", read from the final state" if self.final_state else ""
        if self.encoder_layers:
            extra += (
                f", encoder of {self.encoder_layers} layer(s) whose final state feeds "
                "every decoder step"
            )
        return (
            f"window {self.length}, hop {self.hop}, {self.initial_state} state, "
            f"{self.output}{classes}{extra}"
        )
