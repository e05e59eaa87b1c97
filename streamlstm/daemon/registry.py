"""Building sources and sinks from the config: one object per ``[[sources]]`` or ``[[sinks]]``
table (each class's ``from_config``), importing only the kinds a site uses.

Building is all or nothing, which is what lets a reload be: :func:`build_sinks` closes the
sinks it built before one failed, and :func:`check_broker_settings` reads the broker's
password and TLS files before anything connects. The daemon (at start and on SIGHUP),
``streamlstm check-config`` and a fleet worker build through here.
"""

from __future__ import annotations

from pathlib import Path

from .. import _mqtt
from ..sinks import Sink
from ..sources import Source
from .config import (
    BrokerConfig,
    JSONLSinkConfig,
    MQTTSinkConfig,
    MQTTSourceConfig,
    ReplaySourceConfig,
    SerialSourceConfig,
    SinkConfig,
    SiteConfig,
    StdoutSinkConfig,
)


def build_sources(config: SiteConfig, width: int, model_rate: float | None = None) -> list[Source]:
    """One source object per ``[[sources]]`` table (imports only the kinds used);
    ``model_rate`` (samples/s) is what MQTT sources compare each message's rate with."""
    sources: list[Source] = []
    for settings in config.sources:
        if isinstance(settings, SerialSourceConfig):
            from ..sources.serial import SerialSource

            sources.append(SerialSource.from_config(settings, width))
        elif isinstance(settings, MQTTSourceConfig):
            from ..sources.mqtt import MQTTSource

            sources.append(MQTTSource.from_config(settings, width, config.mqtt, model_rate))
        elif isinstance(settings, ReplaySourceConfig):
            from ..sources.replay import ReplaySource

            sources.append(ReplaySource.from_config(settings, width))
        else:
            from ..sources.demo import DemoSource

            sources.append(DemoSource.from_demo_config(settings, width))
    return sources


def build_sinks(config: SiteConfig, *, spool_by_daemon: bool = False) -> list[Sink]:
    """One sink object per ``[[sinks]]`` table, all or none.

    The MQTT sink (which connects as it is built) is built last, so that another sink
    failing to build never leaves an extra MQTT connection behind; sinks built before a
    failure are closed again and the error is raised. ``spool_by_daemon``: see
    :class:`~streamlstm.sinks.mqtt.MQTTSink` (a fleet worker's alerts of many partitions).
    """
    tables = config.sinks
    built: dict[int, Sink] = {}
    try:
        for index in sorted(
            range(len(tables)), key=lambda i: isinstance(tables[i], MQTTSinkConfig)
        ):
            built[index] = _build_sink(tables[index], config.mqtt, spool_by_daemon)
    except BaseException:
        for sink in built.values():
            sink.close()
        raise
    return [built[index] for index in range(len(tables))]


def _build_sink(settings: SinkConfig, broker: BrokerConfig, spool_by_daemon: bool) -> Sink:
    if isinstance(settings, StdoutSinkConfig):
        from ..sinks.stdout import StdoutSink

        return StdoutSink.from_config(settings)
    if isinstance(settings, JSONLSinkConfig):
        from ..sinks.jsonl import JSONLSink

        return JSONLSink.from_config(settings)
    from ..sinks.mqtt import MQTTSink

    return MQTTSink.from_config(settings, broker, spool_by_daemon=spool_by_daemon)


def check_broker_settings(config: SiteConfig) -> None:
    """Read the broker password and TLS files now (a client is made, not connected), so a
    reload fails as a whole instead of leaving a source that cannot connect."""
    if any(
        isinstance(settings, (MQTTSourceConfig, MQTTSinkConfig))
        for settings in (*config.sources, *config.sinks)
    ):
        _mqtt.make_client(config.mqtt, "check")


def seq_path(config: SiteConfig) -> Path | None:
    """Where the alert ``seq`` counter persists: the MQTT sink's spool folder (created);
    None without an MQTT sink (then numbering restarts with the daemon)."""
    for settings in config.sinks:
        if isinstance(settings, MQTTSinkConfig):
            Path(settings.spool_dir).mkdir(parents=True, exist_ok=True)
            return Path(settings.spool_dir) / "seq"
    return None
