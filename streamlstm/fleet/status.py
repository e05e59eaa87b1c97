"""``streamlstm fleet status --config SITE.toml``: who owns which partition, how far behind
each is, and how old its last snapshot is (``--json`` for scripts)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..daemon import config as config_module
from ..errors import ConfigError


@dataclass(frozen=True)
class PartitionStatus:
    """One partition as the fleet's stores describe it."""

    partition: int
    owner: str | None  # lease holder now (None: free)
    epoch: int  # current ownership epoch (0: never owned)
    snapshot_seq: int  # last stream sequence the stored snapshot covers
    snapshot_age_s: float | None  # None: no snapshot yet
    snapshot_bytes: int
    snapshot_store: str  # "inline", "object" or "none"
    lag: int | None  # messages the current epoch's consumer has not delivered (None: none)
    acked_seq: int | None  # the consumer's ack floor


@dataclass(frozen=True)
class FleetStatus:
    stream_messages: int
    stream_last_seq: int
    workers: int
    partitions: list[PartitionStatus]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="owners, lag and last snapshot per partition")
    status.add_argument(
        "--config",
        "-c",
        metavar="SITE.toml",
        required=True,
        help="a worker's site configuration (its [fleet] section)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print(f"streamlstm fleet: {exc}", file=sys.stderr)
        return 2
    if config.fleet is None:
        print(f"streamlstm fleet: {args.config} has no [fleet] section", file=sys.stderr)
        return 2
    try:
        import nats  # noqa: F401
    except ModuleNotFoundError:
        print("streamlstm fleet: needs nats-py (pip install 'streamlstm[fleet]')", file=sys.stderr)
        return 2
    from .config import FleetSettings
    from .connection import FleetError

    try:
        status = asyncio.run(read_status(FleetSettings.from_config(config)))
    except FleetError as exc:
        print(f"streamlstm fleet: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # no server, timeouts: say so plainly
        print(
            f"streamlstm fleet: cannot read the fleet's state ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(asdict(status), indent=2))
    else:
        print(format_status(status))
    return 0


async def read_status(settings: Any) -> FleetStatus:
    """Read leases, snapshot records and consumers (changes nothing)."""
    import nats.js.errors

    from .connection import connect, open_stores
    from .leases import Leases, owners
    from .snapshots import SnapshotStore

    nc = await connect(settings, name="streamlstm-fleet-status", persistent=False)
    try:
        stores = await open_stores(nc, settings, create=False)
        lease_owners = await owners(stores.leases)
        workers = await Leases(stores.leases, settings).live_workers()
        store = SnapshotStore(stores.state, stores.objects, settings)
        info = await stores.js.stream_info(settings.stream)
        rows = []
        now = time.time()
        for partition in range(settings.partitions):
            try:
                record, _ = await store.read_record(partition)
            except nats.js.errors.KeyNotFoundError:
                record = None
            lag = acked = None
            if record is not None:
                name = f"{settings.name}-p{partition}-e{record.epoch}"
                try:
                    consumer = await stores.js.consumer_info(settings.stream, name)
                    lag = int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0)
                    acked = int(consumer.ack_floor.stream_seq) if consumer.ack_floor else 0
                except nats.js.errors.NotFoundError:
                    pass
            written = record.written if record is not None and record.written else None
            rows.append(
                PartitionStatus(
                    partition,
                    lease_owners.get(partition),
                    record.epoch if record else 0,
                    record.seq if record else 0,
                    None if written is None else max(0.0, now - written),
                    record.bytes if record else 0,
                    "none"
                    if record is None or not record.bytes
                    else ("object" if record.object else "inline"),
                    lag,
                    acked,
                )
            )
        return FleetStatus(int(info.state.messages), int(info.state.last_seq), workers, rows)
    finally:
        await nc.close()


def format_status(status: FleetStatus) -> str:
    lines = [
        f"stream: {status.stream_messages} messages, last sequence "
        f"{status.stream_last_seq}; {status.workers} live worker(s)",
        f"{'part':>4}  {'owner':<20} {'epoch':>5} {'lag':>8} {'acked':>10} "
        f"{'snapshot':>10} {'age':>8} {'bytes':>9}  store",
    ]
    for row in status.partitions:
        age = "-" if row.snapshot_age_s is None else f"{row.snapshot_age_s:.1f}s"
        lines.append(
            f"{row.partition:>4}  {row.owner or '(free)':<20} {row.epoch:>5} "
            f"{'-' if row.lag is None else row.lag:>8} "
            f"{'-' if row.acked_seq is None else row.acked_seq:>10} {row.snapshot_seq:>10} "
            f"{age:>8} {row.snapshot_bytes:>9}  {row.snapshot_store}"
        )
    return "\n".join(lines)
