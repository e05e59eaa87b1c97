"""Shares of a batch run on several threads at once (streamlstm._threads)."""

from __future__ import annotations

import threading

import pytest

from streamlstm._threads import run_shares, share_bounds


@pytest.mark.parametrize(
    "count,shares,align,smallest,bounds",
    [
        (100, 2, 4, 32, [0, 48, 100]),  # cut at a multiple of the tile
        (63, 2, 4, 32, [0, 63]),  # fewer than two shares' worth: one share
        (64, 2, 4, 32, [0, 32, 64]),
        (10, 4, 1, 1, [0, 2, 5, 7, 10]),
        (3, 8, 1, 1, [0, 1, 2, 3]),  # never more shares than items
        (0, 2, 4, 4, [0, 0]),  # nothing to do: one empty share
        (5, 1, 4, 1, [0, 5]),
    ],
)
def test_share_bounds(count, shares, align, smallest, bounds):
    assert share_bounds(count, shares, align, smallest) == bounds


def test_run_shares_runs_every_share_at_once_the_first_on_the_caller():
    seen: dict[int, list[int]] = {}
    threads: dict[int, int] = {}
    barrier = threading.Barrier(3, timeout=10)  # all three shares at once, or a timeout

    def kernel(tag, first, last, share):
        assert tag == "args"
        threads[share] = threading.get_ident()
        barrier.wait()
        seen[share] = list(range(first, last))

    bounds = share_bounds(30, 3, 1, 1)
    run_shares(kernel, [("args", bounds[k], bounds[k + 1], k) for k in range(3)])
    assert sorted(seen) == [0, 1, 2]
    assert sorted(i for items in seen.values() for i in items) == list(range(30))
    assert threads[0] == threading.get_ident()  # the first share runs on the caller
    assert len(set(threads.values())) == 3


def test_run_shares_waits_for_every_share_then_raises_the_first_error():
    finished = []
    release = threading.Event()

    def kernel(share):
        if share == 0:
            raise ValueError("share 0 failed")
        assert release.wait(10)
        finished.append(share)

    timer = threading.Timer(0.2, release.set)
    timer.start()
    with pytest.raises(ValueError, match="share 0 failed"):
        run_shares(kernel, [(0,), (1,), (2,)])
    assert sorted(finished) == [1, 2]  # the others had finished before the error came back

    def other_fails(share):
        if share == 2:
            raise KeyError("share 2")

    with pytest.raises(KeyError, match="share 2"):
        run_shares(other_fails, [(0,), (1,), (2,)])
