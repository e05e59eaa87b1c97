"""The fused per-sample loop: model step, residual, score, smoothing, alert state machine.

One compiled call handles a whole micro-batch. The parallel kernel groups samples by
state row with :func:`streamlstm.kernels.group_by_row` (rows in parallel with ``prange``,
each row's samples in arrival order); the serial one takes them in arrival order. Every
per-sensor quantity lives in the caller's arrays (columns ``I_*`` of ``istate`` and
``F_*`` of ``fstate``); events go to per-sample slots (``ev_kind``, ``ev_peak``,
``ev_duration``), so no two threads ever write the same place and Python reads the events
back in arrival order.

Numba keys its on-disk cache of these kernels on this file alone, though they hold
:func:`~streamlstm.detect.features.window_features` and the model step: the package drops
the cache when any of its compiled sources changes (:mod:`streamlstm._kernel_cache`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import get_thread_id, njit, prange

from ..kernels import NO_SAMPLE, group_by_row, step_of_kind
from ..kernels import layout as L
from . import params as P
from .features import window_features

# Integer state per sensor (istate columns).
I_STEPS = 0  # model steps since the sensor's first sample or reset
I_ABOVE = 1  # consecutive scored samples above the threshold (debounce counter)
I_ALERT = 2  # 1 while an alert is open
I_HAS_PRED = 3  # 1 when preds[row] holds a prediction for the next input
I_HAS_SCORE = 4  # 1 once the smoothed score has a value
I_FILL = 5  # feature front end: samples in the window so far (<= window)
I_POS = 6  # feature front end: next ring slot to write (= the oldest sample)
I_SINCE = 7  # feature front end: samples since the last feature vector
I_FILLED = 8  # samples scored with one or more missing (NaN) channels filled in
N_INT = 9

# Float state per sensor (fstate columns).
F_SCORE = 0  # smoothed score
F_PEAK = 1  # highest smoothed score of the open alert
F_START = 2  # timestamp the open alert started
F_BELOW = 3  # timestamp the score went below the end threshold (NaN: not below)
N_FLOAT = 4

EVENT_NONE, EVENT_START, EVENT_END = 0, 1, 2

JIT = {"cache": True, "nogil": True, "error_model": "numpy", "_nrt": False}


@njit(inline="always", **JIT)
def _alert_machine(dparams, ist, fst, score, t, i, ev_kind, ev_peak, ev_duration):
    """Advance one sensor's alert state by one newly scored sample at time ``t``."""
    if ist[I_STEPS] <= dparams[P.P_WARMUP]:
        ist[I_ABOVE] = 0
        return
    if ist[I_ALERT] == 0:
        if score > dparams[P.P_THRESHOLD]:
            ist[I_ABOVE] += 1
        else:
            ist[I_ABOVE] = 0
        if ist[I_ABOVE] >= dparams[P.P_DEBOUNCE]:
            ist[I_ALERT] = 1
            fst[F_START] = t
            fst[F_PEAK] = score
            fst[F_BELOW] = np.nan
            ev_kind[i] = EVENT_START
            ev_peak[i] = score
            ev_duration[i] = 0.0
        return
    if score > fst[F_PEAK]:
        fst[F_PEAK] = score
    if score < dparams[P.P_END_THRESHOLD]:
        if np.isnan(fst[F_BELOW]):
            fst[F_BELOW] = t
        if t - fst[F_BELOW] >= dparams[P.P_QUIET_TIME]:
            ist[I_ALERT] = 0
            ist[I_ABOVE] = 0
            fst[F_BELOW] = np.nan
            ev_kind[i] = EVENT_END
            ev_peak[i] = fst[F_PEAK]
            ev_duration[i] = t - fst[F_START]
    else:
        fst[F_BELOW] = np.nan


@njit(inline="always", **JIT)
def _adapt_level(dparams, ist, fst, x, xin, raw_input, mask, level_center, level_scale, level):
    """Guarded drift adaptation: move the level term's offset ``level`` towards this
    step's input while no alert is open and the smoothed score is at or below the
    threshold, within ``P_LEVEL_BOUND`` normal standard deviations of the centre."""
    alpha = dparams[P.P_LEVEL_ALPHA]
    if alpha == 0.0 or ist[I_ALERT] == 1 or fst[F_SCORE] > dparams[P.P_THRESHOLD]:
        return
    bound = dparams[P.P_LEVEL_BOUND]
    for k in range(level.shape[0]):
        if _usable(x, k, raw_input, mask):
            moved = level[k] + alpha * (np.float64(xin[k]) - level_center[k] - level[k])
            limit = bound * level_scale[k]
            level[k] = min(max(moved, -limit), limit)


@njit(**JIT)
def _usable(x, k, raw_input, mask):
    """Whether raw input channel ``k`` of sample ``x`` is scored (unmasked and finite)."""
    return not raw_input or (mask[k] != 0.0 and np.isfinite(x[k]))


@njit(**JIT)
def _detect_one(i, row, model, batch, scoring, features, alerts, per_row, work, results, kind):
    """Sample ``i`` (state row ``row``) through model and detector. The arguments are the
    kernels' groups (see :func:`detect_kernels`); ``work`` is this thread's row of each
    work buffer."""
    params, layout, states = model
    _, samples, times = batch
    dparams, center, whiten, level_center, level_whiten, level_scale, mask, fill = scoring
    codes, hop = features
    istate, fstate, preds, levels, rings, rejected = per_row
    xin, out, err, scratch = work
    scores, status, ev_kind, ev_peak, ev_duration = results
    x = samples[i]
    t = times[i]
    ist = istate[row]
    fst = fstate[row]
    ev_kind[i] = EVENT_NONE
    raw_input = codes.shape[0] == 0 and mask.shape[0] > 0
    finite = np.isfinite(t)
    usable = 0
    missing = 0
    infinite = 0
    for k in range(x.shape[0]):
        if raw_input and mask[k] == 0.0:
            continue
        if np.isfinite(x[k]):
            usable += 1
        else:
            missing += 1
            if np.isinf(x[k]):
                infinite += 1
    if not raw_input:
        finite &= missing == 0
    else:
        # A missing (NaN) channel is filled in below; an infinite value is a corrupt
        # reading, and a sample with no scored channel left measures nothing: both are
        # rejected whole.
        finite &= usable > 0 and infinite == 0
    if not finite:
        # The next good sample is not scored: the prediction on file was for this one.
        status[i] = L.REJECTED_SAMPLE
        rejected[row] += 1
        ist[I_HAS_PRED] = 0
        scores[i] = np.nan
        return
    status[i] = L.OK
    if codes.shape[0] > 0:
        ring = rings[row]
        window = ring.shape[0]
        pos = ist[I_POS]
        for a in range(x.shape[0]):
            ring[pos, a] = x[a]
        ist[I_POS] = (pos + 1) % window
        if ist[I_FILL] < window:
            ist[I_FILL] += 1
        ist[I_SINCE] += 1
        if ist[I_FILL] < window or ist[I_SINCE] < hop:
            scores[i] = fst[F_SCORE] if ist[I_HAS_SCORE] == 1 else np.nan
            return
        ist[I_SINCE] = 0
        window_features(ring, ist[I_POS], codes, xin)
    else:
        pred = preds[row]
        for k in range(x.shape[0]):
            if not raw_input or _usable(x, k, raw_input, mask):
                xin[k] = x[k]
            elif mask[k] == 0.0 or ist[I_HAS_PRED] == 0:
                xin[k] = fill[k]
            else:
                xin[k] = pred[k]  # a missing value: the model's own prediction of it
        if missing > 0:
            ist[I_FILLED] += 1

    direct = dparams[P.P_DIRECT] == 1.0
    raw = np.nan
    if not direct and ist[I_HAS_PRED] == 1:
        pred = preds[row]
        n = xin.shape[0]
        for k in range(n):
            if _usable(x, k, raw_input, mask):
                err[k] = np.float64(xin[k]) - np.float64(pred[k]) - center[k]
            else:
                err[k] = 0.0
        # Pooled over the whitened components: their mean square (P_POOL 0) or their
        # largest square (1: one channel far out is not diluted by the others).
        pool_max = dparams[P.P_POOL] == 1.0
        raw = 0.0
        for a in range(n):
            z = 0.0
            for k in range(n):
                z += whiten[a, k] * err[k]
            raw = max(raw, z * z) if pool_max else raw + z * z
        # Optional level term: how far the input itself is from the calibrated normal
        # one (a next-step predictor absorbs a shift present from the start), less the
        # sensor's adapted offset ``levels[row]`` (0 without drift adaptation).
        level = levels[row]
        for a in range(level_whiten.shape[0]):
            z = 0.0
            for k in range(n):
                if _usable(x, k, raw_input, mask):
                    z += level_whiten[a, k] * (np.float64(xin[k]) - level_center[k] - level[k])
            raw = max(raw, z * z) if pool_max else raw + z * z
        scored = n if not raw_input else usable
        raw = np.sqrt(raw) if pool_max else np.sqrt(raw / scored)
    code = step_of_kind(params, layout, states[row], xin, out, scratch, kind)
    if code != L.OK:
        status[i] = code
        rejected[row] += 1
        ist[I_HAS_PRED] = 0
        scores[i] = np.nan
        return
    ist[I_STEPS] += 1
    if direct:
        raw = np.float64(out[np.int64(dparams[P.P_SCORE_INDEX])])
    else:
        pred = preds[row]
        delta = dparams[P.P_DELTA] == 1.0
        for k in range(out.shape[0]):
            pred[k] = out[k] + xin[k] if delta else out[k]
        ist[I_HAS_PRED] = 1
    if np.isfinite(raw):
        if ist[I_HAS_SCORE] == 1:
            alpha = dparams[P.P_ALPHA]
            fst[F_SCORE] = alpha * raw + (1.0 - alpha) * fst[F_SCORE]
        else:
            fst[F_SCORE] = raw
            ist[I_HAS_SCORE] = 1
        if alerts:
            _alert_machine(dparams, ist, fst, fst[F_SCORE], t, i, ev_kind, ev_peak, ev_duration)
        _adapt_level(
            dparams, ist, fst, x, xin, raw_input, mask, level_center, level_scale, levels[row]
        )
    scores[i] = fst[F_SCORE] if ist[I_HAS_SCORE] == 1 else np.nan


@njit(**JIT)
def _detect_group(
    first, nxt, model, batch, scoring, features, alerts, per_row, work, results, kind
):
    """One row's samples in arrival order, from sample ``first`` along the ``nxt`` links.

    The whole body of the parallel kernel's loop, out of line, so that its loop body is a
    single call to type.
    """
    rows = batch[0]
    i = first
    while i != NO_SAMPLE:
        _detect_one(
            i, rows[i], model, batch, scoring, features, alerts, per_row, work, results, kind
        )
        i = nxt[i]


@functools.cache
def detect_kernels(kind: int) -> tuple[Any, Any]:
    """``(detect_serial, detect_parallel)`` compiled for models of one ``kind`` (see
    :func:`streamlstm.kernels.kernel_kind`): the model step inside compiles only that cell.
    Closures over ``kind``, an int: Numba compiles them with ``kind`` as a constant and
    caches one entry per kind (its cache key hashes the closure's cells).

    Both take ``(model, batch, scoring, features, alerts, per_row, work, results, links)``,
    arrays in groups (tuples, unpacked at no cost in compiled code):

    * ``model``: ``(params, layout, states)``, the packed model and ``(capacity, S)``
      recurrent states;
    * ``batch``: ``(rows, samples, times)`` of a micro-batch of ``M`` samples: state rows,
      ``(M, A)`` samples in sensor units, ``(M,)`` seconds;
    * ``scoring``: ``(dparams, center, whiten, level_center, level_whiten, level_scale,
      mask, fill)``: packed parameters, residual scoring (``(D,)``, ``(D, D)``), the
      optional level term (``(0,)``/``(0, 0)``: none) and its channels' normal standard
      deviations (the adaptation bound's unit; ``(0,)`` without adaptation), and per input
      channel 1 = scored / 0 = masked and the value fed for a masked channel (a missing
      value in a scored channel is fed the model's previous prediction of it and left out
      of that sample's score);
    * ``features``: ``(codes, hop)``, feature statistic codes (empty: raw samples feed the
      model) and raw samples between feature vectors;
    * ``alerts``: 0 primes (scores and state advance, the alert machine is left alone);
    * ``per_row``: ``(istate, fstate, preds, levels, rings, rejected)``, per-row detector
      state, last prediction ``(capacity, O)``, level offsets ``(capacity, D)`` float64,
      feature rings ``(capacity, window, A)`` float64 (``(capacity, 1, 1)`` unused without
      features) and rejected counts;
    * ``work``: ``(xbuf, obuf, ebuf, scratch)``, per-thread work rows;
    * ``results``: ``(scores, status, ev_kind, ev_peak, ev_duration)``, each ``(M,)``;
    * ``links``: the grouping buffer of :meth:`streamlstm.Bank.kernel_args`.
    """

    @njit(**JIT)
    def detect_serial(model, batch, scoring, features, alerts, per_row, work, results, links):
        """:func:`detect_parallel` on the calling thread, samples in arrival order: the same
        results (each sample touches only its own row), without grouping (``links`` is
        not used) and without :func:`_detect_group`, a compiled level less to build."""
        rows = batch[0]
        xbuf, obuf, ebuf, scratch = work
        mine = (xbuf[0], obuf[0], ebuf[0], scratch[0])
        for i in range(rows.shape[0]):
            _detect_one(
                i, rows[i], model, batch, scoring, features, alerts, per_row, mine, results, kind
            )

    @njit(parallel=True, **JIT)
    def detect_parallel(model, batch, scoring, features, alerts, per_row, work, results, links):
        """Run a micro-batch through model and detector, rows in parallel, each row's
        samples in arrival order."""
        rows = batch[0]
        xbuf, obuf, ebuf, scratch = work
        row_last, heads, nxt = links[0], links[1], links[2]
        groups = group_by_row(rows, row_last, heads, nxt)
        for g in prange(groups):
            tid = get_thread_id()
            mine = (xbuf[tid], obuf[tid], ebuf[tid], scratch[tid])
            _detect_group(
                heads[g], nxt, model, batch, scoring, features, alerts, per_row, mine, results, kind
            )

    return detect_serial, detect_parallel
