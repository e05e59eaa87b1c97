"""Ownership leases: one key per partition in a KV bucket whose TTL expires them.

A lease is taken with ``create`` (fails while another worker holds it) and renewed with a
revision-checked ``update``: a renewal succeeds only if nobody touched the key since our
last write, so a worker that was paused past the TTL (its key expired and maybe taken)
learns it lost the lease instead of stealing it back. Workers also keep a heartbeat key
(``w.<id>``) in the same bucket, which is how each counts the live workers for its fair
share.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from .config import FleetSettings

LEASE_PREFIX = "p."
#: JetStream's error code for a failed revision check.
WRONG_LAST_SEQUENCE = 10071
WORKER_PREFIX = "w."


@dataclass
class Lease:
    """A partition we hold: the key's revision we last wrote, and when (monotonic) that
    write was sent (the TTL runs from about then)."""

    partition: int
    revision: int
    renewed_at: float


class LeaseRefused(Exception):
    """The lease is someone else's now (or expired): revision check failed."""


class Leases:
    """The lease bucket as seen by one worker."""

    def __init__(self, kv: KeyValue, settings: FleetSettings) -> None:
        self._kv = kv
        self._settings = settings
        self._value = json.dumps({"owner": settings.worker_id}).encode()

    async def acquire(self, partition: int) -> Lease | None:
        """Take a free partition's lease; None if another worker holds it."""
        sent = time.monotonic()
        try:
            revision = await self._kv.create(f"{LEASE_PREFIX}{partition}", self._value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        return Lease(partition, revision, sent)

    async def renew(self, lease: Lease) -> None:
        """Renew (revision-checked); :class:`LeaseRefused` if the lease is not ours any more.
        Transient errors (timeouts, no responders) propagate: the caller retries."""
        sent = time.monotonic()
        try:
            lease.revision = await self._kv.update(
                f"{LEASE_PREFIX}{lease.partition}", self._value, last=lease.revision
            )
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            raise LeaseRefused(f"partition {lease.partition}") from None
        lease.renewed_at = sent

    def overdue(self, lease: Lease, now: float | None = None) -> bool:
        """True once the lease went unrenewed for :attr:`FleetSettings.overdue_s`."""
        now = time.monotonic() if now is None else now
        return now - lease.renewed_at >= self._settings.overdue_s

    async def release(self, lease: Lease) -> None:
        """Give the partition up (revision-checked: never deletes another worker's lease).
        A renewal that crossed this call moved the revision on: then the key is looked up
        once more and deleted if it still holds our lease."""
        key = f"{LEASE_PREFIX}{lease.partition}"
        if await self._delete(key, lease.revision):
            return
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return  # expired: nothing of ours to release
        if entry.value == self._value and entry.revision is not None:
            await self._delete(key, entry.revision)

    async def _delete(self, key: str, revision: int) -> bool:
        """Delete ``key`` if its revision is still ``revision``; False if it moved on."""
        try:
            await self._kv.delete(key, last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return False
        except nats.js.errors.BadRequestError as exc:
            # nats-py's delete passes the server's "wrong last sequence" on unconverted.
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            return False
        return True

    async def heartbeat(self) -> None:
        await self._kv.put(f"{WORKER_PREFIX}{self._settings.worker_id}", self._value)

    async def leave(self) -> None:
        """Remove our heartbeat (the others' fair share grows at once)."""
        await self._kv.delete(f"{WORKER_PREFIX}{self._settings.worker_id}")

    async def live_workers(self) -> int:
        """Workers whose heartbeat has not expired (ourselves included)."""
        return len({key for key in await _keys(self._kv) if key.startswith(WORKER_PREFIX)})


async def _keys(kv: KeyValue) -> set[str]:
    """The bucket's keys (a set: nats-py lists a key twice when it is written meanwhile)."""
    try:
        return set(await kv.keys())
    except nats.js.errors.NoKeysError:
        return set()


async def owners(kv: KeyValue) -> dict[int, str]:
    """Partition -> the worker holding its lease now (for ``fleet status``)."""
    out = {}
    for key in await _keys(kv):
        if key.startswith(LEASE_PREFIX):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            out[int(key[len(LEASE_PREFIX) :])] = json.loads(entry.value or b"{}").get("owner", "?")
    return out
