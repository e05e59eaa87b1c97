"""The demo source: the accelerometer recording shipped inside the package, replayed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..daemon.config import DemoSourceConfig, section_values
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
    """:class:`ReplaySource` of the packaged recording (``speed`` 0 = as fast as possible);
    its ``settings`` are those of a replay of that file."""

    def __init__(
        self,
        *,
        width: int,
        name: str = "demo",
        speed: float = DemoSourceConfig.speed,
        block: int = DemoSourceConfig.block,
        progress: bool = DemoSourceConfig.progress,
    ) -> None:
        path = demo_path()
        super().__init__(
            path=str(path),
            width=width,
            name=name,
            speed=speed,
            block=block,
            progress=progress,
            recording=load_recording(path, width),
        )

    @classmethod
    def from_demo_config(cls, settings: DemoSourceConfig, width: int) -> DemoSource:
        """The source a validated ``[[sources]]`` table of type demo describes (a demo
        table, not a replay's: :meth:`ReplaySource.from_config` takes those)."""
        return cls(width=width, **section_values(settings))
