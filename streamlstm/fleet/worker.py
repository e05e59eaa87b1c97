"""``streamlstm run`` with a ``[fleet]`` section: one worker of a fleet (asyncio).

Three loops share one event loop, so no state is touched by two threads:

* the *lease* loop renews our leases every TTL/4, drops a partition whose renewal is
  refused, and keeps our fair share, ``ceil(P / live workers)``: it takes free partitions
  when short and hands off surplus ones when workers joined;
* one *consume* task per owned partition fetches from that epoch's durable consumer,
  waits while the lease is overdue (nothing is applied then), applies the batch (a
  synchronous step: decode, gate, detector, alert numbering), hands the alerts to the
  sinks, writes the journal, and acknowledges;
* the *snapshot* loop writes each partition's state with the sequence it covers.

Taking a partition: lease (create) -> claim the next epoch of its state record (fencing
the previous owner's writes) -> note the previous consumer's ack floor and delete it ->
restore the snapshot -> a fresh consumer from the snapshot's sequence + 1. Handing one
off (rebalance, SIGTERM): stop its task -> final snapshot -> delete the consumer ->
release the lease: the next owner starts exactly after our last applied sequence.

Alerts: each partition numbers its own (``daemon`` = ``<fleet>/p<partition>``), and every
snapshot carries the partition's alerts the broker has not acknowledged yet
(:class:`~.alerts.WorkerSinks`): the next owner sends those again, and decides the ones
after the snapshot point again by replaying, so a worker's death loses no alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .._ratelimit import RateLimitedLog
from ..daemon import systemd
from ..daemon.config import MQTTSourceConfig, SiteConfig
from ..daemon.intake import TimestampGate, time_policy
from ..daemon.metrics import MetricsServer, Sample
from ..daemon.pipeline import compile_kernels, load_model, make_detector, sample_width
from ..daemon.sensortable import DEFAULT_STATE_INTERVAL_S
from ..errors import StreamLSTMError
from ..sources.mqtt import MQTTSource
from .alerts import WorkerSinks
from .config import FleetSettings
from .connection import (
    RETRYABLE,
    FleetError,
    FleetStores,
    check_partitions,
    connect,
    ensure_stream,
    open_stores,
)
from .journal import Journal
from .leases import Lease, LeaseRefused, Leases
from .metrics import fleet_metrics
from .partitions import Applied, OwnedPartition, StreamMessage
from .snapshots import Claim, SnapshotStore, WriteRefused

log = logging.getLogger("streamlstm.fleet")
_limited = RateLimitedLog(log)

#: Consumers of a deposed owner nobody deleted disappear after this many lease TTLs.
CONSUMER_INACTIVE_TTLS = 20
#: Why taking a partition may fail for now (then its lease is released, tried again later).
TAKEOVER_FAILURES: tuple[type[BaseException], ...] = (WriteRefused, *RETRYABLE)
#: Longest wait for a cancelled task at shutdown (Python 3.11's wait_for can swallow a
#: cancellation, so loops also check a flag), and for all final handoffs together.
STOP_TASK_TIMEOUT_S = 5.0
HANDOFF_TIMEOUT_S = 60.0
#: How long a handoff waits at most for the broker to acknowledge the partition's alerts
#: (those still unacknowledged then travel in the final snapshot and may arrive twice);
#: never above a quarter of the TTL, since the lease is not renewed meanwhile.
HANDOFF_ALERTS_WAIT_S = 2.0


@dataclass
class Ownership:
    """A partition this worker owns: lease, claimed epoch, consumer and compute state."""

    lease: Lease
    claim: Claim
    consumer: str
    compute: OwnedPartition
    subscription: JetStreamContext.PullSubscription | None = None
    task: asyncio.Task[None] | None = None
    active: bool = True
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def partition(self) -> int:
        return self.lease.partition


class FleetWorker:
    """One worker; :meth:`run` blocks until SIGTERM/SIGINT, then hands everything off."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.settings = FleetSettings.from_config(config)
        self.metrics = fleet_metrics()
        self.loaded = load_model(config.model.path)
        probe = make_detector(self.loaded.model, config.detector)
        width = sample_width(probe, self.loaded.model)
        source = config.sources[0]
        assert isinstance(source, MQTTSourceConfig)  # validate() refuses any other [fleet] site
        self.decoder = MQTTSource.from_config(
            source, width, config.mqtt, self.loaded.model.sample_rate
        )
        self.gate = TimestampGate(time_policy(config.daemon))
        self.journal = Journal(self.settings.journal_path, self.settings.worker_id)
        self.owned: dict[int, Ownership] = {}
        self.sinks = WorkerSinks(config, self.settings.worker_id, self.metrics)
        self.metrics.collector(self._collect)
        self._server: MetricsServer | None = None
        port = config.daemon.metrics_port
        if port is not None:
            self._server = MetricsServer(self.metrics, config.daemon.metrics_host, port)
        self._stores: FleetStores | None = None
        self._leases: Leases | None = None
        self._snapshots: SnapshotStore | None = None
        self._stopping = False
        # Fetch waits this long at most, so that an overdue lease is noticed quickly.
        self._fetch_wait = min(1.0, self.settings.overdue_s / 4)

    # -- entry -----------------------------------------------------------------------------
    def run(self) -> int:
        compile_kernels(self.loaded.model, self.config)
        try:
            asyncio.run(self._main())
        finally:
            self._close()
        return 0

    async def _main(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: log.warning(
                "SIGHUP ignored: a fleet worker does not reload; restart it (SIGTERM hands its "
                "partitions off first)"
            ),
        )
        settings = self.settings
        # Connecting waits for the servers: a SIGTERM meanwhile must still stop us.
        starting = asyncio.create_task(connect(settings, name=f"streamlstm-{settings.worker_id}"))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            log.info("stopped before any NATS server answered")
            return
        stopping.cancel()
        nc = starting.result()
        try:
            if not await self._set_up(nc, stop):
                return
            log.info(
                "fleet worker %s: %d partitions, lease TTL %g s, stream %s",
                settings.worker_id,
                settings.partitions,
                settings.lease_ttl_s,
                settings.stream,
            )
            interval = settings.renew_interval_s
            steps = [
                self._every(interval, "lease renewal", self._renew),
                self._every(interval, "rebalancing", self._balance),
                self._every(settings.snapshot_interval_s, "snapshots", self._snapshot_all),
                self._every(DEFAULT_STATE_INTERVAL_S, "sensor states", self._publish_all_states),
            ]
            watchdog = systemd.watchdog_interval()
            if watchdog is not None:  # fed while the event loop turns
                steps.append(self._every(min(watchdog, 1.0), "watchdog", _feed_watchdog))
            loops = [asyncio.create_task(step) for step in steps]
            systemd.notify("READY=1")
            systemd.notify(f"STATUS=fleet worker {settings.worker_id}")
            await stop.wait()
            systemd.notify("STOPPING=1")
            log.info("stopping: handing off %d partition(s)", len(self.owned))
            self._stopping = True
            for task in loops:
                task.cancel()
            await asyncio.wait(loops, timeout=STOP_TASK_TIMEOUT_S)
            # Stop every partition's consumption first (nothing competes with the handoff
            # requests then), and hand them all off at once.
            owned = list(self.owned.values())
            await asyncio.gather(*(self._stop_task(o) for o in owned))
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(self._hand_off(o) for o in owned)), HANDOFF_TIMEOUT_S
                )
            except asyncio.TimeoutError:
                log.error(
                    "final handoffs unfinished after %g s; the next owners replay from "
                    "the last snapshots",
                    HANDOFF_TIMEOUT_S,
                )
            if self._leases is not None:
                with contextlib.suppress(*RETRYABLE):
                    await self._leases.leave()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), STOP_TASK_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await nc.close()
        log.info("stopped cleanly")

    async def _set_up(self, nc: Any, stop: asyncio.Event) -> bool:
        """Find or create the stream and buckets, retrying while JetStream is not ready (a
        cluster electing its leaders); False if stopped meanwhile."""
        settings = self.settings
        while not stop.is_set():
            try:
                stores = self._stores = await open_stores(nc, settings, create=True)
                await check_partitions(stores.state, settings)
                await ensure_stream(stores.js, settings, self.config.mqtt)
            except RETRYABLE as exc:
                _limited(
                    logging.WARNING,
                    "setup",
                    "JetStream not ready (%s); retrying",
                    type(exc).__name__,
                )
                await asyncio.sleep(1.0)
                continue
            self._leases = Leases(stores.leases, settings)
            self._snapshots = SnapshotStore(stores.state, stores.objects, settings)
            return True
        return False

    def _close(self) -> None:
        self._publish_states()
        self.sinks.close()
        if self._server is not None:
            self._server.close()
        self.journal.close()

    # -- leases and fair share -------------------------------------------------------------
    async def _every(self, seconds: float, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step()`` every ``seconds`` until stopping; a failure never ends the loop."""
        while not self._stopping:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _limited(logging.ERROR, what, "%s failed (%s: %s)", what, type(exc).__name__, exc)
            await asyncio.sleep(seconds)

    async def _renew(self) -> None:
        """Heartbeat and renew every lease: its own loop, so that slow takeovers and
        handoffs never delay a renewal."""
        assert self._leases is not None
        with contextlib.suppress(*RETRYABLE):
            await self._leases.heartbeat()
        # All renewals in flight at once: one round trip, however many partitions.
        owned = list(self.owned.values())
        outcomes = await asyncio.gather(
            *(self._leases.renew(o.lease) for o in owned), return_exceptions=True
        )
        for ownership, outcome in zip(owned, outcomes, strict=True):
            if isinstance(outcome, LeaseRefused):
                self.metrics.inc(
                    "streamlstm_fleet_refused_writes_total", labels=(("kind", "lease"),)
                )
                self._lose(ownership, "lease_refused")
            elif isinstance(outcome, RETRYABLE):
                _limited(
                    logging.WARNING,
                    "renew",
                    "lease renewal failed (%s); retrying",
                    type(outcome).__name__,
                )
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _balance(self) -> None:
        """Keep our fair share: hand off surplus partitions, take free ones when short."""
        assert self._leases is not None
        try:
            workers = await self._leases.live_workers()
        except RETRYABLE:
            return
        if self._stopping:
            return
        share = self.settings.fair_share(workers)
        surplus = len(self.owned) - share
        if surplus > 0:
            for ownership in sorted(self.owned.values(), key=lambda o: -o.partition)[:surplus]:
                log.info(
                    "rebalance: %d workers, handing off partition %d", workers, ownership.partition
                )
                await self._hand_off(ownership)
        elif surplus < 0:
            await self._acquire_some(-surplus)

    async def _acquire_some(self, wanted: int) -> None:
        partitions = self.settings.partitions
        start = zlib.crc32(self.settings.worker_id.encode()) % partitions
        for step in range(partitions):
            if wanted <= 0 or self._stopping:
                return
            partition = (start + step) % partitions
            if partition not in self.owned and await self._acquire(partition):
                wanted -= 1

    async def _acquire(self, partition: int) -> bool:
        assert self._leases is not None and self._snapshots is not None
        lease = await self._leases.acquire(partition)
        if lease is None:
            return False
        try:
            claim = await self._snapshots.claim(partition)
            replay_until = await self._retire_consumer(partition, claim.previous_epoch)
            ownership = self._own(lease, claim, replay_until)
            await self._subscribe(ownership)
        except TAKEOVER_FAILURES as exc:
            log.warning("could not take partition %d (%s: %s)", partition, type(exc).__name__, exc)
            with contextlib.suppress(*RETRYABLE):
                await self._leases.release(lease)
            return False
        self.owned[partition] = ownership
        carried = ownership.claim.state
        sent = self.sinks.resend(
            ownership.compute.daemon_name, carried.alerts if carried is not None else []
        )
        if sent:
            log.info(
                "partition %d: sent %d alert(s) its previous owner had not delivered",
                partition,
                sent,
            )
        record = claim.record
        self.metrics.inc("streamlstm_fleet_handoffs_total", labels=(("direction", "in"),))
        self.journal.write(
            "acquired",
            partition,
            record.epoch,
            from_seq=record.seq,
            replay_until=replay_until,
            previous_epoch=claim.previous_epoch,
        )
        log.info(
            "took partition %d (epoch %d) from sequence %d%s",
            partition,
            record.epoch,
            record.seq + 1,
            f"; replaying up to {replay_until}" if replay_until else "",
        )
        ownership.task = asyncio.create_task(self._consume(ownership))
        return True

    def _own(self, lease: Lease, claim: Claim, replay_until: int) -> Ownership:
        record = claim.record
        compute = OwnedPartition(
            record.partition,
            record.epoch,
            self.settings,
            self.loaded,
            make_detector(self.loaded.model, self.config.detector),
            self.decoder,
            self.gate,
            seq=record.seq,
            alert_seq=record.alert_seq,
            replay_until=replay_until,
            max_sensors=self.config.daemon.max_sensors,
            sensor_idle_s=self.config.daemon.sensor_idle_s,
        )
        problem = claim.problem
        if claim.state is not None:
            try:
                compute.restore(claim.state)
            except (StreamLSTMError, AttributeError, KeyError, TypeError, ValueError) as exc:
                problem = f"does not fit this model ({exc})"
        if problem is not None:
            self.metrics.inc(
                "streamlstm_snapshot_restore_failures_total", labels=(("reason", "unusable"),)
            )
            log.error(
                "partition %d: snapshot unusable (%s); its sensors start fresh from sequence %d",
                record.partition,
                problem,
                record.seq + 1,
            )
        name = f"{self.settings.name}-p{record.partition}-e{record.epoch}"
        return Ownership(lease, claim, name, compute)

    async def _retire_consumer(self, partition: int, epoch: int | None) -> int:
        """Delete the previous epoch's consumer; its ack floor (what the deposed owner had
        finished, 0 if unknown) marks how far a crash replay re-applies messages."""
        if epoch is None:
            return 0
        assert self._stores is not None
        js, stream = self._stores.js, self.settings.stream
        name = f"{self.settings.name}-p{partition}-e{epoch}"
        try:
            info = await js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            return 0  # handed off cleanly (it deleted its consumer)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(stream, name)
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    async def _subscribe(self, ownership: Ownership) -> None:
        assert self._stores is not None
        seq = ownership.claim.record.seq
        settings = self.settings
        config = ConsumerConfig(
            durable_name=ownership.consumer,
            filter_subject=settings.partition_subject(ownership.partition),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if seq else DeliverPolicy.ALL,
            opt_start_seq=seq + 1 if seq else None,
            ack_policy=AckPolicy.ALL,
            ack_wait=max(30.0, 3 * settings.lease_ttl_s),
            max_ack_pending=max(10_000, 4 * settings.fetch_batch),
            inactive_threshold=CONSUMER_INACTIVE_TTLS * settings.lease_ttl_s,
        )
        await self._stores.js.add_consumer(settings.stream, config)
        ownership.subscription = await self._stores.js.pull_subscribe_bind(
            ownership.consumer, stream=settings.stream
        )

    # -- giving partitions up --------------------------------------------------------------
    async def _stop_task(self, ownership: Ownership) -> None:
        """Stop consuming the partition (idempotent)."""
        ownership.active = False
        task, ownership.task = ownership.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_TASK_TIMEOUT_S)
        subscription, ownership.subscription = ownership.subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _hand_off(self, ownership: Ownership) -> None:
        """Planned handoff: final snapshot, delete our consumer, release the lease."""
        assert self._leases is not None and self._stores is not None
        partition, compute = ownership.partition, ownership.compute
        await self._stop_task(ownership)
        self.owned.pop(partition, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(HANDOFF_ALERTS_WAIT_S, self.settings.lease_ttl_s / 4)
        while loop.time() < deadline:
            with contextlib.suppress(Exception):  # unreadable: the snapshot write says so
                if not self.sinks.unacknowledged(compute.daemon_name):
                    break
            await asyncio.sleep(0.05)
        try:
            if not await self._snapshot(ownership):
                return  # refused: somebody else owns it already
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._stores.js.delete_consumer(self.settings.stream, ownership.consumer)
            await self._leases.release(ownership.lease)
        except Exception as exc:  # the partition is dropped all the same
            log.error(
                "partition %d: handoff incomplete (%s: %s); the next owner replays from "
                "the last snapshot",
                partition,
                type(exc).__name__,
                exc,
            )
            return
        self.metrics.inc("streamlstm_fleet_handoffs_total", labels=(("direction", "out"),))
        self.journal.write("released", partition, compute.epoch, seq=compute.applied_seq)
        log.info("handed off partition %d at sequence %d", partition, compute.applied_seq)

    def _lose(self, ownership: Ownership, reason: str) -> None:
        """The partition is not ours any more: drop it without applying or writing more."""
        if self.owned.get(ownership.partition) is not ownership:
            return
        del self.owned[ownership.partition]
        ownership.active = False
        asyncio.get_running_loop().create_task(self._stop_task(ownership))
        if reason != "failure":
            self.metrics.inc("streamlstm_fleet_lease_losses_total")
        compute = ownership.compute
        self.journal.write(
            "lost", ownership.partition, compute.epoch, reason=reason, seq=compute.applied_seq
        )
        log.warning(
            "lost partition %d (%s) at sequence %d",
            ownership.partition,
            reason,
            compute.applied_seq,
        )

    # -- consuming -------------------------------------------------------------------------
    async def _consume(self, ownership: Ownership) -> None:
        """Consume until the partition is given up; a failure (a bug) gives it up too, so
        that it is taken again from its last snapshot instead of silently stalling."""
        try:
            await self._consume_batches(ownership)
        except Exception as exc:
            log.error(
                "partition %d failed (%s: %s); releasing it to be taken again from its "
                "last snapshot",
                ownership.partition,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            self.metrics.inc("streamlstm_fleet_partition_failures_total")
            self._lose(ownership, "failure")
            assert self._leases is not None
            with contextlib.suppress(*RETRYABLE):
                await self._leases.release(ownership.lease)

    async def _consume_batches(self, ownership: Ownership) -> None:
        subscription = ownership.subscription
        assert subscription is not None
        while ownership.active:
            try:
                messages = await subscription.fetch(
                    self.settings.fetch_batch, timeout=self._fetch_wait
                )
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue  # nothing new (fetch may raise either)
            except RETRYABLE:
                await asyncio.sleep(0.2)
                continue
            except Exception as exc:
                _limited(
                    logging.ERROR,
                    f"fetch{ownership.partition}",
                    "partition %d: fetch failed (%s: %s)",
                    ownership.partition,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(0.5)
                continue
            if not messages or not await self._lease_current(ownership):
                continue
            batch = [
                StreamMessage(
                    m.subject,
                    m.data,
                    m.metadata.sequence.stream,
                    m.metadata.num_pending,
                    m.metadata.timestamp.timestamp(),
                )
                for m in messages
            ]
            self._applied(ownership, ownership.compute.apply(batch))
            with contextlib.suppress(*RETRYABLE):
                await messages[-1].ack()  # AckPolicy.ALL: covers the whole batch

    async def _lease_current(self, ownership: Ownership) -> bool:
        """Wait while the lease is overdue (apply nothing then); False once it is lost."""
        assert self._leases is not None
        while ownership.active and self._leases.overdue(ownership.lease):
            await asyncio.sleep(0.05)
        return ownership.active

    def _applied(self, ownership: Ownership, applied: Applied) -> None:
        compute = ownership.compute
        if applied.messages:
            self.journal.write(
                "applied",
                compute.partition,
                compute.epoch,
                first=applied.first_seq,
                last=applied.last_seq,
                count=applied.messages,
                replayed=applied.replayed,
            )
        self.metrics.inc("streamlstm_fleet_messages_total", applied.messages)
        self.metrics.inc("streamlstm_fleet_replayed_messages_total", applied.replayed)
        self.metrics.inc("streamlstm_samples_total", applied.samples)
        if applied.refused:
            self.metrics.inc("streamlstm_sensor_limit_samples_total", applied.refused)
        if applied.expired:
            log.info(
                "partition %d: %d sensor(s) idle for %g s expired",
                compute.partition,
                len(applied.expired),
                self.config.daemon.sensor_idle_s,
            )
            self.metrics.inc("streamlstm_expired_sensors_total", len(applied.expired))
        if applied.records:
            for record in applied.records:
                self.metrics.inc("streamlstm_alerts_total", labels=(("kind", record["kind"]),))
            self.sinks.alerts(applied.records)
            self._publish_states({r["sensor"] for r in applied.records})
        if applied.expired:
            self.sinks.forget(applied.expired)

    # -- sinks -----------------------------------------------------------------------------
    async def _publish_all_states(self) -> None:
        self._publish_states()

    def _publish_states(self, only: set[str] | None = None) -> None:
        states = {}
        for ownership in self.owned.values():
            compute = ownership.compute
            names = compute.changed if only is None else compute.changed & only
            states.update({n: compute.sensors[n] for n in names if n in compute.sensors})
            compute.changed -= names
        if states:
            self.sinks.states(states)

    # -- snapshots -------------------------------------------------------------------------
    async def _snapshot_all(self) -> None:
        assert self._leases is not None
        for ownership in list(self.owned.values()):
            if ownership.active and not self._leases.overdue(ownership.lease):
                await self._snapshot(ownership)

    async def _snapshot(self, ownership: Ownership) -> bool:
        """Write the partition's state if it moved on; False if the write was refused."""
        assert self._snapshots is not None
        compute, claim = ownership.compute, ownership.claim
        async with ownership.write_lock:
            seq = compute.applied_seq
            if seq == claim.record.seq:
                return True
            try:
                # synchronous: consistent with seq
                state = compute.export(self.sinks.unacknowledged(compute.daemon_name))
                size = await self._snapshots.write(claim, seq, compute.alert_seq, state)
            except WriteRefused:
                self.metrics.inc(
                    "streamlstm_fleet_refused_writes_total", labels=(("kind", "snapshot"),)
                )
                self.journal.write("refused", compute.partition, compute.epoch, seq=seq)
                self._lose(ownership, "snapshot_refused")
                return False
            except Exception as exc:  # a timeout, an election, a full store: try again later
                self.metrics.inc("streamlstm_snapshot_failures_total")
                _limited(
                    logging.WARNING,
                    "snapshot",
                    "partition %d: snapshot failed (%s: %s)",
                    compute.partition,
                    type(exc).__name__,
                    exc,
                )
                return True
        self.metrics.inc("streamlstm_snapshots_total")
        self.metrics.set(
            "streamlstm_snapshot_bytes", size, (("partition", str(compute.partition)),)
        )
        self.journal.write("snapshot", compute.partition, compute.epoch, seq=seq, bytes=size)
        return True

    # -- metrics read at scrape time -------------------------------------------------------
    def _collect(self) -> list[Sample]:
        owned = list(self.owned.values())
        out: list[Sample] = [("streamlstm_fleet_owned_partitions", (), len(owned))]
        out += [
            ("streamlstm_fleet_consumer_lag", (("partition", str(o.partition)),), o.compute.lag)
            for o in owned
        ]
        counts = self.decoder.stats.snapshot()
        out += [
            ("streamlstm_parse_errors_total", (("reason", r),), n)
            for r, n in counts.parse_errors.items()
        ]
        out.append(("streamlstm_rate_mismatches_total", (), counts.rate_mismatches))
        out += [
            ("streamlstm_refused_frames_total", (("reason", r),), n)
            for r, n in list(self.gate.counts.frames.items())
        ]
        return out + self.sinks.samples()


async def _feed_watchdog() -> None:
    systemd.notify("WATCHDOG=1")


def run_worker(config: SiteConfig) -> int:
    """Run a fleet worker until SIGTERM/SIGINT; 2 when the fleet cannot run as configured."""
    try:
        worker = FleetWorker(config)
    except (FleetError, StreamLSTMError, OSError) as exc:
        log.error("%s", exc)
        return 2
    try:
        return worker.run()
    except FleetError as exc:
        log.error("%s", exc)
        return 2
