"""Site configuration: a TOML file, validated completely before anything starts.

Every problem is reported with its path in the file (``sources[1].baud: expected an
integer, got 'fast'``), all at once, and unknown keys are errors so that a typo never
silently falls back to a default. The only free-form table is ``[detector.options]``,
whose keys go to the detector, which validates them itself. See
``contrib/site.example.toml`` for every key with its default.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One key: accepted Python types, default (``REQUIRED`` if none), optional extra check."""

    types: tuple[type, ...]
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(map(repr, options))}"


def _at_least(low: float) -> Callable[[Any], str | None]:
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


INT, FLOAT, STR, BOOL, LIST = (int,), (int, float), (str,), (bool,), (list,)
OPTIONAL_INT, OPTIONAL_STR = (int, type(None)), (str, type(None))

# -- intake: queue bound in bytes, device-time policy (see daemon/framequeue.py, intake.py) --
INTAKE = {
    "queue_bytes": Field(INT, 64 * 2**20, _at_least(4096)),
    "time_future_s": Field(FLOAT, 300.0, _at_least(0)),
    "redelivery_window_s": Field(FLOAT, 60.0, _at_least(0)),
    "clock_reset_s": Field(FLOAT, 10.0, _at_least(0)),
}
MQTT_INTAKE = {
    "ack": Field(STR, "on-receive", _choice("on-receive", "after-step")),
    "receive_maximum": Field(INT, 1000, lambda v: None if 1 <= v <= 65535 else "must be 1..65535"),
}
MQTT_SINK_DELIVERY = {
    "refused_retry_s": Field(FLOAT, 60.0, _positive),
}
# ---------------------------------------------------------------------------------------------

DAEMON = {
    **INTAKE,
    "queue_frames": Field(INT, 4096, _at_least(1)),
    "backpressure": Field(STR, "drop-oldest", _choice("drop-oldest", "block")),
    "batch_samples": Field(INT, 8192, _at_least(1)),
    "batch_wait_ms": Field(FLOAT, 5.0, _at_least(0)),
    "snapshot_path": Field(OPTIONAL_STR, None),
    "snapshot_interval_s": Field(FLOAT, 60.0, _positive),
    "metrics_port": Field(OPTIONAL_INT, None, lambda v: None if v is None else _port(v)),
    "metrics_host": Field(STR, "127.0.0.1"),
    "log_level": Field(STR, "info", _choice("debug", "info", "warning", "error")),
    "exit_when_sources_end": Field(BOOL, True),
    # Fleet size and faults (issue 12: bounded memory, idle expiry, kernels before READY).
    "max_sensors": Field(INT, 100_000, _at_least(1)),
    "sensor_idle_s": Field(FLOAT, 86_400.0, _at_least(0)),
}
MODEL = {
    "path": Field(OPTIONAL_STR, None),
}
# -- window classifiers: class alerts (see detect/windowed.py; None: the detector's default) --
WINDOW_CLASSIFIER = {
    "normal_class": Field(OPTIONAL_STR, None),
    "min_probability": Field(
        (int, float, type(None)),
        None,
        lambda v: None if v is None or 0 < v <= 1 else "must be in (0, 1]",
    ),
    "consecutive": Field(OPTIONAL_INT, None, lambda v: None if v is None else _at_least(1)(v)),
}
# ---------------------------------------------------------------------------------------------


# -- [fleet]: one worker of a fleet sharing partitions over NATS JetStream (streamlstm/fleet) --
def _servers(v: Any) -> str | None:
    ok = v and all(isinstance(s, str) and s.startswith(("nats://", "tls://")) for s in v)
    return None if ok else "must be a non-empty list of nats:// or tls:// URLs"


def _name(v: Any) -> str | None:
    if not v or any(c in v for c in " .*>/\\\t") or v.startswith("$"):
        return "must be a non-empty name without spaces, '.', '*', '>', '/' or a leading '$'"
    return None


FLEET = {
    "servers": Field(LIST, ["nats://127.0.0.1:4222"], _servers),
    "partitions": Field(INT, check=lambda v: None if 1 <= v <= 4096 else "must be 1..4096"),
    "intake": Field(STR, "mqtt", _choice("mqtt", "nats")),
    "partition_prefix": Field(STR, "part", _name),
    "name": Field(STR, "streamlstm", _name),
    "worker_id": Field(OPTIONAL_STR, None, lambda v: None if v is None else _name(v)),
    "stream": Field(STR, "STREAMLSTM_SAMPLES", _name),
    "stream_max_age_s": Field(FLOAT, 7 * 86400.0, _positive),
    "replicas": Field(INT, 1, lambda v: None if 1 <= v <= 5 else "must be 1..5"),
    "leases_bucket": Field(STR, "streamlstm_leases", _name),
    "state_bucket": Field(STR, "streamlstm_state", _name),
    "objects_bucket": Field(STR, "streamlstm_snapshots", _name),
    "inline_snapshot_bytes": Field(
        INT,
        256 * 1024,
        lambda v: (
            None if 0 <= v <= 900 * 1024 else "must be 0..921600 (the KV value limit is 1 MB)"
        ),
    ),
    "lease_ttl_s": Field(FLOAT, 10.0, _at_least(1.0)),
    "snapshot_interval_s": Field(FLOAT, 5.0, _positive),
    "fetch_batch": Field(INT, 1000, _at_least(1)),
    "journal_path": Field(OPTIONAL_STR, None),
}
# ---------------------------------------------------------------------------------------------

DETECTOR = {
    "capacity": Field(INT, 1024, _at_least(1)),
    "threads": Field(OPTIONAL_INT, None, lambda v: None if v is None else _at_least(1)(v)),
    "options": Field((dict,), {}),
    # Window models only (streamlstm.detect.WindowDetector): "cuda" evaluates their windows
    # on the GPU; the streaming Detector runs on the CPU (pipeline.make_detector refuses it).
    "device": Field(STR, "cpu", _choice("cpu", "cuda")),
    **WINDOW_CLASSIFIER,
}
TLS = {
    "ca_file": Field(OPTIONAL_STR, None),
    "cert_file": Field(OPTIONAL_STR, None),
    "key_file": Field(OPTIONAL_STR, None),
}
MQTT = {
    "host": Field(STR, "localhost"),
    "port": Field(INT, 1883, _port),
    "client_id": Field(STR, "streamlstm"),
    "keepalive_s": Field(INT, 30, _at_least(5)),
    "session_expiry_s": Field(INT, 86400, _at_least(0)),
    "username": Field(OPTIONAL_STR, None),
    "password_file": Field(OPTIONAL_STR, None),
    "password_env": Field(OPTIONAL_STR, None),
    "tls": Field((dict, type(None)), None),
}
LINES = {
    "columns": Field(LIST, None),
    "time_column": Field(OPTIONAL_INT, None),
    "sensor_column": Field(OPTIONAL_INT, None),
}
SOURCES: dict[str, dict[str, Field]] = {
    "serial": {
        "port": Field(STR),
        "baud": Field(INT, 115200, _positive),
        "bytesize": Field(INT, 8, _choice(5, 6, 7, 8)),  # type: ignore[arg-type]
        "parity": Field(STR, "none", _choice("none", "even", "odd", "mark", "space")),
        "stopbits": Field(FLOAT, 1, lambda v: None if v in (1, 1.5, 2) else "must be 1, 1.5 or 2"),
        "format": Field(STR, "csv", _choice("csv", "tsv", "json", "binary")),
        "sensor": Field(STR, None),
        "max_line": Field(INT, 4096, _at_least(16)),
        "reopen_min_s": Field(FLOAT, 0.5, _positive),
        "reopen_max_s": Field(FLOAT, 30.0, _positive),
        **LINES,
    },
    "mqtt": {
        "topic": Field(STR, check=_template),
        "payload": Field(STR, "json", _choice("json", "csv", "float32")),
        "qos": Field(INT, 1, _choice(0, 1, 2)),  # type: ignore[arg-type]
        "rate": Field((int, float, type(None)), None),
        "max_samples": Field(INT, 65536, _at_least(1)),
        **MQTT_INTAKE,
        **LINES,
    },
    "replay": {
        "path": Field(STR),
        "sensor": Field(STR, None),
        "speed": Field(FLOAT, 0.0, _at_least(0)),
        "rate": Field((int, float, type(None)), None),
        "block": Field(INT, 256, _at_least(1)),
        "plot": Field(OPTIONAL_STR, None),
        "progress": Field(BOOL, True),
        **LINES,
    },
    "demo": {
        "speed": Field(FLOAT, 0.0, _at_least(0)),
        "block": Field(INT, 256, _at_least(1)),
        "progress": Field(BOOL, False),
    },
}
SINKS: dict[str, dict[str, Field]] = {
    "stdout": {"states": Field(BOOL, False)},
    "jsonl": {"path": Field(STR), "fsync": Field(BOOL, False)},
    "mqtt": {
        "alert_topic": Field(STR, "streamlstm/{sensor}/alert", _template),
        # false: no per-sensor state topics (a big fleet fills the broker with retained ones)
        "state_topic": Field((str, bool, type(None)), "streamlstm/{sensor}/state", _state_topic),
        "status_topic": Field(STR, "streamlstm/status"),
        "state_interval_s": Field(FLOAT, 10.0, _positive),
        "spool_dir": Field(STR, "streamlstm-spool"),
        "homeassistant": Field(BOOL, False),
        "discovery_prefix": Field(STR, "homeassistant"),
        # The broker alerts go to: [mqtt]'s unless host/port are given (e.g. a fleet's
        # mosquitto next to nats-server); "3.1.1" for a broker without MQTT 5.
        "host": Field(OPTIONAL_STR, None),
        "port": Field(OPTIONAL_INT, None, lambda v: None if v is None else _port(v)),
        "protocol": Field(STR, "5", _choice("5", "3.1.1")),
        **MQTT_SINK_DELIVERY,
    },
}


class _Problems(list):
    def add(self, path: str, text: str) -> None:
        self.append(f"{path}: {text}")


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names[t] for t in types if t is not type(None))


def _table(
    raw: Any, spec: Mapping[str, Field], path: str, problems: _Problems, skip: tuple[str, ...] = ()
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
    for key, field in spec.items():
        where = f"{path}.{key}" if path else key
        # Invalid or missing values still get the default (None if required) so that the
        # cross-field checks below can run and report everything in one go.
        out[key] = None if field.default is REQUIRED else field.default
        if key not in raw:
            if field.default is REQUIRED:
                problems.add(where, "missing (required)")
            continue
        value = raw[key]
        # bool is an int in Python, but `baud = true` is a mistake, not 1.
        wrong_bool = isinstance(value, bool) and bool not in field.types
        if wrong_bool or not isinstance(value, field.types):
            problems.add(where, f"expected {_type_name(field.types)}, got {value!r}")
            continue
        if field.check is not None and value is not None:
            error = field.check(value)
            if error:
                problems.add(where, f"{error}, got {value!r}")
                continue
        out[key] = value
    return out


def _typed_list(
    raw: Any, kinds: Mapping[str, Mapping[str, Field]], path: str, problems: _Problems
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
        table = _table(entry, kinds[kind], where, problems, skip=("type", "name"))
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


def validate(raw: Mapping[str, Any], *, base: Path | None = None) -> dict[str, Any]:
    """A parsed TOML document -> a complete config (defaults filled), or :class:`ConfigError`.

    Relative paths in the file are taken relative to ``base`` (the file's folder).
    """
    problems = _Problems()
    sections = {"daemon": DAEMON, "model": MODEL, "detector": DETECTOR, "mqtt": MQTT}
    optional = ("sources", "sinks", "fleet")
    for key in raw:
        if key not in (*sections, *optional):
            problems.add(key, f"unknown section (known: {', '.join([*sections, *optional])})")
    config: dict[str, Any] = {
        name: _table(raw.get(name, {}), spec, name, problems) for name, spec in sections.items()
    }
    config["fleet"] = _table(raw["fleet"], FLEET, "fleet", problems) if "fleet" in raw else None
    if config["mqtt"].get("tls") is not None:
        config["mqtt"]["tls"] = _table(config["mqtt"]["tls"], TLS, "mqtt.tls", problems)
    if config["mqtt"].get("password_file") and config["mqtt"].get("password_env"):
        problems.add("mqtt.password_env", "give password_file or password_env, not both")
    config["sources"] = _typed_list(
        raw.get("sources", [{"type": "demo"}]), SOURCES, "sources", problems
    )
    config["sinks"] = _typed_list(raw.get("sinks", [{"type": "stdout"}]), SINKS, "sinks", problems)
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
    return config


def _resolve_paths(config: dict[str, Any], base: Path) -> None:
    def resolve(table: dict[str, Any], key: str) -> None:
        if table.get(key):
            table[key] = str((base / os.path.expanduser(table[key])).resolve())

    resolve(config["daemon"], "snapshot_path")
    if config["fleet"] is not None:
        resolve(config["fleet"], "journal_path")
    resolve(config["model"], "path")
    resolve(config["mqtt"], "password_file")
    for key in TLS:
        if config["mqtt"]["tls"]:
            resolve(config["mqtt"]["tls"], key)
    for table in config["sources"]:
        if table["type"] == "replay":
            resolve(table, "path")
            resolve(table, "plot")
    for table in config["sinks"]:
        resolve(table, "path")
        resolve(table, "spool_dir")


def load(path: str | os.PathLike[str] | None) -> dict[str, Any]:
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
