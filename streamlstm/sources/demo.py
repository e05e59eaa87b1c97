"""The demo source: the accelerometer recording shipped inside the package, replayed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .replay import ReplaySource, load_recording

DEMO_FILE = "data/demo.npz"


def demo_path() -> Path:
    """Where the packaged demo recording lives; :class:`SourceError` if this install lacks it."""
    path = Path(str(resources.files("streamlstm") / DEMO_FILE))
    if not path.is_file():
        raise SourceError(
            f"the demo recording {path} is missing from this installation "
            "(reinstall streamlstm, or run with --config and a source of your own)"
        )
    return path


class DemoSource(ReplaySource):
    """:class:`ReplaySource` of the packaged recording (``speed`` 0 = as fast as possible)."""

    def __init__(self, config: dict[str, Any], width: int) -> None:
        recording = load_recording(demo_path(), width, {})
        super().__init__({**config, "path": str(demo_path()), "plot": None}, width, recording)
