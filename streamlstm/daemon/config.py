"""Site configuration: a TOML file, validated completely before anything starts.

Every problem is reported with its path in the file (``sources[1].baud: expected an
integer, got 'fast'``), all at once, and unknown keys are errors so that a typo never
silently falls back to a default. The only free-form table is ``[detector.options]``,
whose keys go to the detector, which validates them itself. See
``contrib/site.example.toml`` for every key with its default.

The result is a frozen :class:`SiteConfig`: one frozen dataclass per section
(:class:`DaemonConfig`, :class:`ModelConfig`, :class:`DetectorConfig`,
:class:`BrokerConfig` with its :class:`TLSConfig`, :class:`FleetConfig`) and per kind of
``[[sources]]`` and ``[[sinks]]`` table (:data:`SourceConfig`, :data:`SinkConfig`). The
dataclasses are the schema: a field's name is its key, its default the key's default,
its type the accepted TOML type, and its ``metadata`` (:func:`rule`) any further check.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

# -- the schema: every section's keys are the fields of one frozen dataclass ----------------
Check = Callable[[Any], "str | None"]  # returns an error text or None


def rule(check: Check | None = None, *, toml: tuple[type, ...] | None = None) -> dict[str, Any]:
    """A field's ``metadata``: its extra ``check`` and, where the TOML value may have other
    types than the field holds (``sensor`` may be left out but not given as None; a
    ``state_topic`` of false), the accepted ``toml`` types."""
    return {"check": check, "toml": toml}


def _choice(*options: object) -> Check:
    return lambda v: None if v in options else f"must be one of {', '.join(map(repr, options))}"


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _columns(v: Any) -> str | None:
    if not v or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in v):
        return "must be a non-empty list of column indices >= 0"
    return None


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0..65535"


def _template(v: Any) -> str | None:
    if v.count("{sensor}") != 1:
        return "must contain '{sensor}' exactly once"
    if "#" in v or "+" in v:
        return "must not contain MQTT wildcards"
    return None


def _state_topic(v: Any) -> str | None:
    if isinstance(v, bool):
        return None if v is False else "must be a topic template or false"
    return _template(v)


def _servers(v: Any) -> str | None:
    ok = v and all(isinstance(s, str) and s.startswith(("nats://", "tls://")) for s in v)
    return None if ok else "must be a non-empty list of nats:// or tls:// URLs"


def _name(v: Any) -> str | None:
    if not v or any(c in v for c in " .*>/\\\t") or v.startswith("$"):
        return "must be a non-empty name without spaces, '.', '*', '>', '/' or a leading '$'"
    return None


def _optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


STR, LIST = (str,), (list,)


@dataclass(frozen=True, kw_only=True)
class IntakeConfig:
    """``[daemon]`` intake keys: the queue's byte bound and the device-time policy (see
    :mod:`.framequeue` and :mod:`.intake`)."""

    queue_bytes: int = field(default=64 * 2**20, metadata=rule(_at_least(4096)))
    time_future_s: float = field(default=300.0, metadata=rule(_at_least(0)))
    redelivery_window_s: float = field(default=60.0, metadata=rule(_at_least(0)))
    clock_reset_s: float = field(default=10.0, metadata=rule(_at_least(0)))


@dataclass(frozen=True, kw_only=True)
class DaemonConfig(IntakeConfig):
    """``[daemon]``: the queue, micro-batches, snapshots, metrics, logging, fleet size."""

    queue_frames: int = field(default=4096, metadata=rule(_at_least(1)))
    backpressure: str = field(default="drop-oldest", metadata=rule(_choice("drop-oldest", "block")))
    batch_samples: int = field(default=8192, metadata=rule(_at_least(1)))
    batch_wait_ms: float = field(default=5.0, metadata=rule(_at_least(0)))
    snapshot_path: str | None = None
    snapshot_interval_s: float = field(default=60.0, metadata=rule(_positive))
    metrics_port: int | None = field(default=None, metadata=rule(_optional(_port)))
    metrics_host: str = "127.0.0.1"
    log_level: str = field(
        default="info", metadata=rule(_choice("debug", "info", "warning", "error"))
    )
    exit_when_sources_end: bool = True
    # Fleet size and faults (issue 12: bounded memory, idle expiry, kernels before READY).
    max_sensors: int = field(default=100_000, metadata=rule(_at_least(1)))
    sensor_idle_s: float = field(default=86_400.0, metadata=rule(_at_least(0)))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """``[model]``: the weight file (None: the shipped default model)."""

    path: str | None = None


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """``[detector]``. ``options`` is the free-form ``[detector.options]`` table, passed to
    the detector as keyword overrides (it validates them); a read-only mapping (its values
    are the TOML's: a nested table or array stays a dict or list)."""

    capacity: int = field(default=1024, metadata=rule(_at_least(1)))
    threads: int | None = field(default=None, metadata=rule(_optional(_at_least(1))))
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Window models only (streamlstm.detect.WindowDetector): "cuda" evaluates their windows
    # on the GPU; the streaming Detector runs on the CPU (pipeline.make_detector refuses it).
    device: str = field(default="cpu", metadata=rule(_choice("cpu", "cuda")))
    # Window classifiers: class alerts (see detect/windowed.py; None: the detector's default).
    normal_class: str | None = None
    min_probability: float | None = field(
        default=None,
        metadata=rule(lambda v: None if v is None or 0 < v <= 1 else "must be in (0, 1]"),
    )
    consecutive: int | None = field(default=None, metadata=rule(_optional(_at_least(1))))


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """``[mqtt.tls]``: CA, client certificate and key files (None: the system CAs, no
    client certificate)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """``[mqtt]``: the broker shared by MQTT sources and the MQTT sink. The password comes
    from ``password_file`` (first line) or the environment variable ``password_env``."""

    host: str = "localhost"
    port: int = field(default=1883, metadata=rule(_port))
    client_id: str = "streamlstm"
    keepalive_s: int = field(default=30, metadata=rule(_at_least(5)))
    session_expiry_s: int = field(default=86400, metadata=rule(_at_least(0)))
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    tls: TLSConfig | None = None


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """``[fleet]``: one worker of a fleet sharing partitions over NATS JetStream
    (:mod:`streamlstm.fleet`; its :class:`~streamlstm.fleet.config.FleetSettings` adds
    the resolved worker id and the subject names)."""

    servers: tuple[str, ...] = field(default=("nats://127.0.0.1:4222",), metadata=rule(_servers))
    partitions: int = field(metadata=rule(lambda v: None if 1 <= v <= 4096 else "must be 1..4096"))
    intake: str = field(default="mqtt", metadata=rule(_choice("mqtt", "nats")))
    partition_prefix: str = field(default="part", metadata=rule(_name))
    name: str = field(default="streamlstm", metadata=rule(_name))
    worker_id: str | None = field(default=None, metadata=rule(_optional(_name)))
    stream: str = field(default="STREAMLSTM_SAMPLES", metadata=rule(_name))
    stream_max_age_s: float = field(default=7 * 86400.0, metadata=rule(_positive))
    replicas: int = field(
        default=1, metadata=rule(lambda v: None if 1 <= v <= 5 else "must be 1..5")
    )
    leases_bucket: str = field(default="streamlstm_leases", metadata=rule(_name))
    state_bucket: str = field(default="streamlstm_state", metadata=rule(_name))
    objects_bucket: str = field(default="streamlstm_snapshots", metadata=rule(_name))
    inline_snapshot_bytes: int = field(
        default=256 * 1024,
        metadata=rule(
            lambda v: (
                None if 0 <= v <= 900 * 1024 else "must be 0..921600 (the KV value limit is 1 MB)"
            )
        ),
    )
    lease_ttl_s: float = field(default=10.0, metadata=rule(_at_least(1.0)))
    snapshot_interval_s: float = field(default=5.0, metadata=rule(_positive))
    fetch_batch: int = field(default=1000, metadata=rule(_at_least(1)))
    journal_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class EntryConfig:
    """What every ``[[sources]]`` and ``[[sinks]]`` table has: its ``name`` (default: its
    type and index, ``serial0``), which names it in logs and metrics. ``kind`` is the
    table's ``type``."""

    kind: ClassVar[str]
    name: str

    def __post_init__(self) -> None:
        """The checks :func:`validate` makes on a table of this kind, for one built in code
        (a source's or sink's keyword constructor builds its settings here): a
        :class:`ConfigError` names every problem, as ``serial 'bench'.baud: ...``."""
        problems = _Problems()
        where = f"{self.kind} {self.name!r}"
        table: dict[str, Any] = {"type": self.kind, "path_in_config": where}
        for key, expected in keys(type(self)).items():
            table[key] = value = getattr(self, key)
            # In code an array is a tuple (in TOML, a list), and None is what leaving an
            # optional key out gives.
            accepted = expected.types + ((tuple,) if list in expected.types else ())
            accepted += (type(None),) if expected.default is None else ()
            error = _value_problem(value, accepted, expected.check)
            if error:
                problems.add(f"{where}.{key}", error)
        if not problems and isinstance(self, LinesConfig):
            _check_lines(table, problems)
            _check_sensor_naming(table, problems)
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class LinesConfig(EntryConfig):
    """Where a text line's values are (0-based): the sample's ``columns``, the device time
    (``time_column``; None: the host receive time) and the sensor id (``sensor_column``)."""

    columns: tuple[int, ...] | None = field(default=None, metadata=rule(toml=LIST))
    time_column: int | None = None
    sensor_column: int | None = None


@dataclass(frozen=True, kw_only=True)
class SerialSourceConfig(LinesConfig):
    """A ``[[sources]]`` table of type ``serial``
    (:class:`streamlstm.sources.serial.SerialSource`)."""

    kind: ClassVar[str] = "serial"
    port: str
    baud: int = field(default=115200, metadata=rule(_positive))
    bytesize: int = field(default=8, metadata=rule(_choice(5, 6, 7, 8)))
    parity: str = field(
        default="none", metadata=rule(_choice("none", "even", "odd", "mark", "space"))
    )
    stopbits: float = field(
        default=1, metadata=rule(lambda v: None if v in (1, 1.5, 2) else "must be 1, 1.5 or 2")
    )
    format: str = field(default="csv", metadata=rule(_choice("csv", "tsv", "json", "binary")))
    sensor: str | None = field(default=None, metadata=rule(toml=STR))
    max_line: int = field(default=4096, metadata=rule(_at_least(16)))
    reopen_min_s: float = field(default=0.5, metadata=rule(_positive))
    reopen_max_s: float = field(default=30.0, metadata=rule(_positive))


@dataclass(frozen=True, kw_only=True)
class MQTTSourceConfig(LinesConfig):
    """A ``[[sources]]`` table of type ``mqtt`` (:class:`streamlstm.sources.mqtt.MQTTSource`)."""

    kind: ClassVar[str] = "mqtt"
    topic: str = field(metadata=rule(_template))
    payload: str = field(default="json", metadata=rule(_choice("json", "csv", "float32")))
    qos: int = field(default=1, metadata=rule(_choice(0, 1, 2)))
    rate: float | None = None
    max_samples: int = field(default=65536, metadata=rule(_at_least(1)))
    # Intake: acknowledgement, and the broker's flow control for "after-step".
    ack: str = field(default="on-receive", metadata=rule(_choice("on-receive", "after-step")))
    receive_maximum: int = field(
        default=1000, metadata=rule(lambda v: None if 1 <= v <= 65535 else "must be 1..65535")
    )


@dataclass(frozen=True, kw_only=True)
class ReplaySourceConfig(LinesConfig):
    """A ``[[sources]]`` table of type ``replay``
    (:class:`streamlstm.sources.replay.ReplaySource`)."""

    kind: ClassVar[str] = "replay"
    path: str
    sensor: str | None = field(default=None, metadata=rule(toml=STR))
    speed: float = field(default=0.0, metadata=rule(_at_least(0)))
    rate: float | None = None
    block: int = field(default=256, metadata=rule(_at_least(1)))
    plot: str | None = None
    progress: bool = True


@dataclass(frozen=True, kw_only=True)
class DemoSourceConfig(EntryConfig):
    """A ``[[sources]]`` table of type ``demo`` (:class:`streamlstm.sources.demo.DemoSource`)."""

    kind: ClassVar[str] = "demo"
    speed: float = field(default=0.0, metadata=rule(_at_least(0)))
    block: int = field(default=256, metadata=rule(_at_least(1)))
    progress: bool = False


@dataclass(frozen=True, kw_only=True)
class StdoutSinkConfig(EntryConfig):
    """A ``[[sinks]]`` table of type ``stdout`` (:class:`streamlstm.sinks.stdout.StdoutSink`)."""

    kind: ClassVar[str] = "stdout"
    states: bool = False


@dataclass(frozen=True, kw_only=True)
class JSONLSinkConfig(EntryConfig):
    """A ``[[sinks]]`` table of type ``jsonl`` (:class:`streamlstm.sinks.jsonl.JSONLSink`)."""

    kind: ClassVar[str] = "jsonl"
    path: str
    fsync: bool = False


@dataclass(frozen=True, kw_only=True)
class MQTTSinkConfig(EntryConfig):
    """A ``[[sinks]]`` table of type ``mqtt`` (:class:`streamlstm.sinks.mqtt.MQTTSink`);
    ``state_topic`` None: no per-sensor state topics (``false`` in the file)."""

    kind: ClassVar[str] = "mqtt"
    alert_topic: str = field(default="streamlstm/{sensor}/alert", metadata=rule(_template))
    # false: no per-sensor state topics (a big fleet fills the broker with retained ones)
    state_topic: str | None = field(
        default="streamlstm/{sensor}/state",
        metadata=rule(_state_topic, toml=(str, bool, type(None))),
    )
    status_topic: str = "streamlstm/status"
    state_interval_s: float = field(default=10.0, metadata=rule(_positive))
    spool_dir: str = "streamlstm-spool"
    homeassistant: bool = False
    discovery_prefix: str = "homeassistant"
    # The broker alerts go to: [mqtt]'s unless host/port are given (e.g. a fleet's
    # mosquitto next to nats-server); "3.1.1" for a broker without MQTT 5.
    host: str | None = None
    port: int | None = field(default=None, metadata=rule(_optional(_port)))
    protocol: str = field(default="5", metadata=rule(_choice("5", "3.1.1")))
    # Delivery: how often an alert the broker refused is sent again.
    refused_retry_s: float = field(default=60.0, metadata=rule(_positive))


SourceConfig = SerialSourceConfig | MQTTSourceConfig | ReplaySourceConfig | DemoSourceConfig
SinkConfig = StdoutSinkConfig | JSONLSinkConfig | MQTTSinkConfig
SOURCE_KINDS: dict[str, type[EntryConfig]] = {
    c.kind: c for c in (SerialSourceConfig, MQTTSourceConfig, ReplaySourceConfig, DemoSourceConfig)
}
SINK_KINDS: dict[str, type[EntryConfig]] = {
    c.kind: c for c in (StdoutSinkConfig, JSONLSinkConfig, MQTTSinkConfig)
}


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """A validated site configuration (:func:`load`, :func:`validate`): every section with
    its defaults filled in, relative paths resolved; ``fleet`` None for a single daemon."""

    daemon: DaemonConfig
    model: ModelConfig
    detector: DetectorConfig
    mqtt: BrokerConfig
    sources: tuple[SourceConfig, ...]
    sinks: tuple[SinkConfig, ...]
    fleet: FleetConfig | None = None


SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "model": ModelConfig,
    "detector": DetectorConfig,
    "mqtt": BrokerConfig,
}


def section_values(section: Any) -> dict[str, Any]:
    """A section's fields by name (its keys, and ``name`` for a source or sink), e.g. to
    pass to a source's or sink's keyword-only constructor."""
    return {f.name: getattr(section, f.name) for f in fields(section)}


# -- validation: TOML tables checked against the dataclasses' fields ------------------------
REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One key of a table: accepted TOML types, default (``REQUIRED`` if none), extra check."""

    types: tuple[type, ...]
    default: Any = REQUIRED
    check: Check | None = None


def _toml_types(hint: Any) -> tuple[type, ...]:
    """The TOML value types a field of type ``hint`` accepts (a float also takes an integer,
    a tuple a list, a mapping or a section a table)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    accepted: list[type] = []
    for member in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(member) or member
        if member is float:
            accepted += [int, float]
        elif origin is tuple:
            accepted.append(list)
        elif origin is Mapping or dataclasses.is_dataclass(member):
            accepted.append(dict)
        else:
            accepted.append(origin)
    return tuple(accepted)


def keys(section: type) -> dict[str, Key]:
    """The keys of a section's table, from its dataclass fields (``name`` of a source or
    sink, validated with ``type``, is not one)."""
    hints = typing.get_type_hints(section)
    entry = {f.name for f in fields(EntryConfig)} if issubclass(section, EntryConfig) else set()
    spec = {}
    for f in fields(section):
        if f.name in entry:
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        elif default is dataclasses.MISSING:
            default = REQUIRED
        check = f.metadata.get("check")
        spec[f.name] = Key(f.metadata.get("toml") or _toml_types(hints[f.name]), default, check)
    return spec


class _Problems(list):
    def add(self, path: str, text: str) -> None:
        self.append(f"{path}: {text}")


def _type_name(accepted: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names[t] for t in accepted if t not in (type(None), tuple))


def _value_problem(value: Any, accepted: tuple[type, ...], check: Check | None) -> str | None:
    """What is wrong with one key's value, if anything: its type, then its ``check``."""
    # bool is an int in Python, but `baud = true` is a mistake, not 1.
    wrong_bool = isinstance(value, bool) and bool not in accepted
    if wrong_bool or not isinstance(value, accepted):
        return f"expected {_type_name(accepted)}, got {value!r}"
    error = None if check is None or value is None else check(value)
    return None if error is None else f"{error}, got {value!r}"


def _table(
    raw: Any, spec: Mapping[str, Key], path: str, problems: _Problems, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.add(path, "expected a table")
        return {}
    out: dict[str, Any] = {}
    for key in raw:
        if key not in spec and key not in skip:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(spec))}"
            problems.add(f"{path}.{key}" if path else key, f"unknown key ({hint})")
    for key, expected in spec.items():
        where = f"{path}.{key}" if path else key
        # Invalid or missing values still get the default (None if required) so that the
        # cross-field checks below can run and report everything in one go.
        out[key] = None if expected.default is REQUIRED else expected.default
        if key not in raw:
            if expected.default is REQUIRED:
                problems.add(where, "missing (required)")
            continue
        value = raw[key]
        error = _value_problem(value, expected.types, expected.check)
        if error:
            problems.add(where, error)
            continue
        out[key] = value
    return out


def _typed_list(
    raw: Any, kinds: Mapping[str, type[EntryConfig]], path: str, problems: _Problems
) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        problems.add(path, "expected an array of tables ([[...]])")
        return []
    out = []
    for index, entry in enumerate(raw):
        where = f"{path}[{index}]"
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or kind not in kinds:
            problems.add(
                f"{where}.type", f"must be one of {', '.join(map(repr, kinds))}, got {kind!r}"
            )
            continue
        table = _table(entry, keys(kinds[kind]), where, problems, skip=("type", "name"))
        name = entry.get("name", f"{kind}{index}")
        if not isinstance(name, str):
            problems.add(f"{where}.name", f"expected a string, got {name!r}")
        table.update(type=kind, name=name, path_in_config=where)
        out.append(table)
    return out


def _check_lines(source: dict[str, Any], problems: _Problems) -> None:
    where = source["path_in_config"]
    text_format = (
        source.get("format", "csv") in ("csv", "tsv") and source.get("payload", "csv") == "csv"
    )
    if source["type"] == "replay":
        text_format = (source["path"] or "").lower().endswith((".csv", ".tsv", ".txt"))
    if source.get("columns") is not None:
        error = _columns(source["columns"])
        if error:
            problems.add(f"{where}.columns", error)
    elif text_format and source["type"] in ("serial", "mqtt"):
        problems.add(
            f"{where}.columns", "required for CSV/TSV input (which columns hold the sample)"
        )
    for key in ("time_column", "sensor_column"):
        if source.get(key) is not None and source[key] < 0:
            problems.add(f"{where}.{key}", "must be >= 0")


def _check_sensor_naming(source: dict[str, Any], problems: _Problems) -> None:
    where = source["path_in_config"]
    if (
        source["type"] == "serial"
        and source["sensor"] is None
        and source["sensor_column"] is None
        and source["format"] in ("csv", "tsv")
    ):
        problems.add(f"{where}.sensor", "set 'sensor' (a fixed id) or 'sensor_column'")
    if source["type"] == "serial" and source["reopen_max_s"] < source["reopen_min_s"]:
        problems.add(f"{where}.reopen_max_s", "must be >= reopen_min_s")
    if source["type"] == "mqtt" and source["ack"] == "after-step" and source["qos"] != 1:
        # QoS 0 has no acks; QoS 2 hands the message over at PUBREC, before the step.
        problems.add(f"{where}.ack", "'after-step' needs qos = 1")


def _check_fleet(config: dict[str, Any], problems: _Problems) -> None:
    """A fleet worker reads samples from the stream, decoded as its one mqtt source says."""
    kinds = [source["type"] for source in config["sources"]]
    if kinds != ["mqtt"]:
        problems.add(
            "sources",
            "a [fleet] worker needs exactly one source, of type 'mqtt' (its "
            "topic template and payload describe the messages in the stream)",
        )
    elif config["sources"][0]["ack"] != "on-receive":
        problems.add("sources[0].ack", "the fleet acknowledges the stream itself: leave 'ack' out")
    for sink in config["sinks"]:
        if sink["type"] != "mqtt":
            continue
        where = sink["path_in_config"]
        on_nats = sink["host"] is None and sink["port"] is None
        if on_nats and sink["protocol"] != "3.1.1":
            problems.add(
                f"{where}.protocol",
                "a [fleet] worker's [mqtt] is nats-server's MQTT listener, which speaks "
                'MQTT 3.1.1: set protocol = "3.1.1", or host/port of an MQTT 5 broker',
            )
        if sink["homeassistant"]:
            problems.add(
                f"{where}.homeassistant",
                "not in a fleet: sensors move between workers, and discovery is per daemon",
            )


def validate(raw: Mapping[str, Any], *, base: Path | None = None) -> SiteConfig:
    """A parsed TOML document -> a complete :class:`SiteConfig` (defaults filled), or
    :class:`ConfigError` listing every problem with its path.

    Relative paths in the file are taken relative to ``base`` (the file's folder).
    """
    problems = _Problems()
    optional = ("sources", "sinks", "fleet")
    for key in raw:
        if key not in (*SECTIONS, *optional):
            problems.add(key, f"unknown section (known: {', '.join([*SECTIONS, *optional])})")
    config: dict[str, Any] = {
        name: _table(raw.get(name, {}), keys(section), name, problems)
        for name, section in SECTIONS.items()
    }
    config["fleet"] = (
        _table(raw["fleet"], keys(FleetConfig), "fleet", problems) if "fleet" in raw else None
    )
    if config["mqtt"].get("tls") is not None:
        config["mqtt"]["tls"] = _table(config["mqtt"]["tls"], keys(TLSConfig), "mqtt.tls", problems)
    if config["mqtt"].get("password_file") and config["mqtt"].get("password_env"):
        problems.add("mqtt.password_env", "give password_file or password_env, not both")
    config["sources"] = _typed_list(
        raw.get("sources", [{"type": "demo"}]), SOURCE_KINDS, "sources", problems
    )
    config["sinks"] = _typed_list(
        raw.get("sinks", [{"type": "stdout"}]), SINK_KINDS, "sinks", problems
    )
    if not config["sources"] and not problems:
        problems.add("sources", "at least one source is needed")
    names = [s["name"] for s in config["sources"]]
    for name in {n for n in names if names.count(n) > 1}:
        problems.add("sources", f"name {name!r} is used more than once")
    for source in config["sources"]:
        if source["type"] in ("serial", "mqtt", "replay"):
            _check_lines(source, problems)
        _check_sensor_naming(source, problems)
    for sink in config["sinks"]:
        if sink["type"] == "mqtt" and sink["state_topic"] is False:
            sink["state_topic"] = None  # what the sink reads as "no state topics"
            if sink["homeassistant"]:
                problems.add(
                    f"{sink['path_in_config']}.homeassistant",
                    "needs state topics (state_topic is false)",
                )
    if sum(s["type"] == "mqtt" for s in config["sinks"]) > 1:
        problems.add("sinks", "at most one mqtt sink")
    if config["fleet"] is not None:
        _check_fleet(config, problems)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    if base is not None:
        _resolve_paths(config, base)
    return _site(config)


def _site(config: dict[str, Any]) -> SiteConfig:
    """The validated tables as frozen dataclasses (arrays become tuples, tables read-only)."""

    def build(section: type[T], table: Mapping[str, Any], **given: Any) -> T:
        return section(**{key: _frozen(table[key]) for key in keys(section)}, **given)

    def entry(kinds: Mapping[str, type[EntryConfig]], table: Mapping[str, Any]) -> Any:
        return build(kinds[table["type"]], table, name=table["name"])

    mqtt = config["mqtt"]
    tls = None if mqtt["tls"] is None else build(TLSConfig, mqtt["tls"])
    return SiteConfig(
        daemon=build(DaemonConfig, config["daemon"]),
        model=build(ModelConfig, config["model"]),
        detector=build(DetectorConfig, config["detector"]),
        mqtt=build(BrokerConfig, {**mqtt, "tls": tls}),
        sources=tuple(entry(SOURCE_KINDS, table) for table in config["sources"]),
        sinks=tuple(entry(SINK_KINDS, table) for table in config["sinks"]),
        fleet=None if config["fleet"] is None else build(FleetConfig, config["fleet"]),
    )


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return MappingProxyType(dict(value))
    return value


def _resolve_paths(config: dict[str, Any], base: Path) -> None:
    def resolve(table: dict[str, Any], key: str) -> None:
        if table.get(key):
            table[key] = str((base / os.path.expanduser(table[key])).resolve())

    resolve(config["daemon"], "snapshot_path")
    if config["fleet"] is not None:
        resolve(config["fleet"], "journal_path")
    resolve(config["model"], "path")
    resolve(config["mqtt"], "password_file")
    for key in keys(TLSConfig):
        if config["mqtt"]["tls"]:
            resolve(config["mqtt"]["tls"], key)
    for table in config["sources"]:
        if table["type"] == "replay":
            resolve(table, "path")
            resolve(table, "plot")
    for table in config["sinks"]:
        resolve(table, "path")
        resolve(table, "spool_dir")


def load(path: str | os.PathLike[str] | None) -> SiteConfig:
    """Read and validate a TOML file; ``None`` gives the built-in demo configuration."""
    if path is None:
        return validate({})
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return validate(raw, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
