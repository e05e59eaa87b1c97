"""The rules, fixed in code before any result was looked at.

1. Datasets and splits: the loaders' docstrings (:mod:`.threew`, :mod:`.tep`,
   :mod:`.nab`, :mod:`.vibration`). The validation part drives every design choice; the
   test part is run once per design and reported as it came out, never used to choose.
2. Every design in :data:`.recipe.DESIGNS` is run on every validation part and recorded.
3. Choice: among designs whose false-alarm rate on normal rows is at most
   ``MAX_FALSE_ALARM_RATE`` on every validation part, the one with the highest mean
   NAB standard score over the validation parts that hold events (3W, TEP, NAB; the
   fan's and CWRU's validation parts are normal data only); a tie (within
   ``TIE_POINTS``) goes to ``delta``, preferred a priori (it cannot chase a level).
   If no design passes the false-alarm rule, the highest mean score wins and the report
   says so.

Amendments, in order, with what had been seen (never a test result):

* After the first validation run (designs ``level`` and ``delta``; no test run):
  ``delta`` beat ``level`` on 3W (NAB 80.8 vs 47.7, false alarms 6 % vs 20 %) and TEP
  (56.1 vs 53.4) and lost on NAB (33.2 vs 67.0, but ``level`` was in alarm on 25 % of
  normal rows), so neither passed the 5 % rule; both trailed the PCA/Hotelling baselines
  on TEP and the rolling z-score on NAB. A delta predictor sees a persistent shift only
  at its onset, which is what T² sees throughout, so two designs add the detector's
  level term (the input's own distance from its normal distribution) to ``delta``:
  ``delta-level`` (diagonal) and ``delta-level-maha`` (Mahalanobis, i.e. T² of the
  inputs plus that of the residuals). Seen then, and left as it is: TEP's validation
  fault runs start at their onset (row 0), so any method alarming from its first row
  scores near 100 there (always-alarm 99.7) and the detector's 20-step warm-up sets
  its delay (3960 s): those streams compare designs with each other, not with the
  baselines. The test runs have a normal prefix (onset at row 160).
* After the first test run (summarised in ``results-earlier-runs.json``): checking a
  test figure that made no sense (TEP fault 3, known to be near-undetectable, "detected" on 93 % of
  its rows by the ``delta`` design, which never flagged a normal row) showed a library
  defect, not a design question: on the residual scale normal scores sit near 1, and an
  end threshold of ``hysteresis * threshold`` could lie below them, so an alert, once
  started, never ended. Alerts now end below ``baseline + hysteresis * (threshold -
  baseline)``, ``baseline`` being the median normal score from calibration. Nothing
  else changed; validation and test were run again and both runs are reported.
* After the second run: ``hysteresis`` 0.8 on the new scale ended alerts almost at the
  threshold, so they re-started on the recovery transient after a burst (seen in the
  daemon's replay test); the library default became 0.3, set a priori. A fold's
  training pieces are now featurised / gap-filled as whole contiguous raw data. Both
  parts were run a third time; the second run is in
  ``results-earlier-runs.json``.
* After the third run: the library's default ``margin`` went from 1.0 to 1.5 (on the
  residual scale), prompted by the daemon's end-to-end test (a model calibrated on noise
  raised false alerts on fresh noise) and, not blind, by every test part's false-alarm
  rate standing far above the 1-per-day budget; and a sample with an infinite value is
  rejected again (NaN, a missing value, is still filled). The designs inherit the
  default margin; both parts were run a fourth time (``results-*.json``; the third run
  is in ``results-earlier-runs.json``).
* Amendment 5, after the fourth test run (so from here on **the test figures are not
  blind**: the designs and the split below were added after seeing test results, which
  had shown that the validation part did not predict the test part's drift false
  alarms, and that the level term's RMS diluted faults showing in few channels):

  - 3W's validation part gains the README's cross-occasion cases, on validation
    instances only (:mod:`.threew`): fit on one occasion's normal segment, stream the
    next validation occasion of the same well, so drift between occasions counts
    against every design's false-alarm rate. The same-occasion cases stay; the test
    part is unchanged. The other datasets keep their validation split, for these
    reasons: TEP has no normal run outside the test part but the fit run (``test[0]``
    is the only other one), and its validation fault runs already come from other
    runs; NAB's validation stream already follows the fit period (a later occasion of
    the same machine); the fan's and CWRU's test normal streams come from the same
    recordings as their fit rows, as their validation streams do.
  - Three designs: ``delta-max`` and ``delta-level-max`` (``pool="max"``: the largest
    whitened component instead of the RMS) and ``delta-maha`` (the residuals' T²
    alone). The choice rule is unchanged. Seen before this amendment was written, on the
    new 3W validation part only: ``level`` in alarm on 70 % of its normal rows.
* Amendment 6, after the fifth run, validation and test parts both seen (validation
  chose ``delta-max``; every level-term design failed the false-alarm rule on the
  cross-occasion cases; the item was on the list before that run): one more design,
  ``delta-level-max-adapt``, the level term with the library's guarded drift adaptation
  (centre follows the input with EWMA weight 0.01 per step while no alert is open and
  the score is below the threshold, within 3 normal standard deviations; both set a
  priori). Expected before its run: it cannot pass the cross-occasion cases (their
  offset is there from the first row, so the guard freezes the centre), and it may
  lower the same-occasion drift false alarms. The rule is unchanged.
* Amendment 7, after the sixth run (validation and test seen: **not blind**; written
  before any run of what it adds). The test part had shown that delta designs miss
  faults present from a recording's first row (CWRU 9/9 → 6/9 detected), which no
  validation part could show, since the fan's and CWRU's held no event.

  - The fan's and CWRU's validation parts gain events, from data taken out of their test
    parts (:mod:`.vibration`): the fan's first 1000 samples (20 s) of each of the 34
    anomalous blocks (configurations 2 and 3), CWRU's first 25 % of each of the 9 fault
    recordings. **The test part shrinks**: those anomalous streams now start at sample
    1000 of 3000 (fan) and at 25 % of the recording (CWRU); its normal streams and fit
    data are unchanged, and its figures are not comparable with the runs before. The
    validation parts' normal streams and fit data are unchanged. As the rule says, the
    mean NAB standard score now runs over every validation part with events (all five).
  - Three designs, each a residual term and a separate level term each read against its
    own normal tail (library: ``level_balance``: the level term's whitening is scaled so
    its own budget score on the calibration data equals the residual term's, then the
    max pool fuses them and the threshold is set for the budget as before):
    ``delta-hybrid`` (diagonal), ``delta-hybrid-maha`` (Mahalanobis whitening of both
    terms), ``delta-hybrid-adapt`` (``delta-hybrid`` with the guarded adaptation of
    amendment 6, same a-priori settings). Expected before the run: they see CWRU's and
    the fan's faults present from the first row, and, as every level design before, they
    probably fail the 5 % rule on 3W's cross-occasion cases, whose offset is there from
    the first row too (the two cannot be told apart from the stream alone). The rule is
    unchanged; every design is run again on every validation part.
* Amendment 8, after the seventh run (validation and test seen, ``results-earlier-runs.json``
  "run7"; not blind). Amendment 7's split was structurally unfair to the detector, which
  the run showed (CWRU validation: level designs in alarm on 90 % of a fault stream's
  rows yet counted as missing it): a stream whose anomaly starts at its first row can be
  detected within its NAB window (10 % of its rows) only if that window outlasts the
  detector's 20-step warm-up and 3-step debounce, i.e. with at least 240 rows. The fan's
  anomalous streams had 96 (validation) and 196 (test) rows, CWRU's validation ones
  about 230. Now (:mod:`.vibration`): the fan's anomalous blocks are split by speed, not
  time: validation streams the whole blocks of configurations 2 and 3 at the 8 speeds in
  odd positions of the sorted speeds (16 events), the test those at the other 9 (18
  events, streamed whole as before amendment 7); CWRU's fault recordings are split at
  40 % (validation about 375 rows, test about 565). **The test part shrinks**: the fan's
  from 34 to 18 anomalous blocks, CWRU's fault streams to their last 60 %. Designs and
  rule unchanged; both parts are run again for every design.
* Amendment 9, after the eighth run (validation and test seen: not blind). The level
  term's threshold share was read on the very data its centre and whitening came from
  (in sample), unlike the residuals, which are cross-fitted; so levels that wander within
  the normal data were under-counted at calibration and showed later as false alarms.
  Library: ``level_fit="cross"`` reads each fold's level term against the statistics of
  the other folds. Two designs, the hybrids with it: ``delta-hybrid-xfit`` and
  ``delta-hybrid-maha-xfit``. **Written after a first run of the prototype on the
  validation parts** (3W first, then all five), so this amendment is not blind even to
  validation: it cut the same-occasion 3W false alarms (three of eight streams from
  27-79 % of normal rows to 0 or 10 %), left three of four cross-occasion cases in alarm
  on 98-100 % of their normal rows (an operating point that moved between occasions is
  not in the fit data, and no out-of-sample reading of it can show it), and lowered TEP
  for the Mahalanobis variant (a 52-channel covariance from two thirds of a 500-row run
  reads held-out rows as farther than the full fit's would be). The rule is unchanged;
  every design is run again on both parts.
* Amendment 10, after the ninth run, written before any run of what it adds (blind to
  its results on both parts). The cross-occasion cases show an operating point that
  moved between occasions, which no calibration on the earlier occasion can hold; on a
  site, an operator commissions a sensor on data believed normal when it is installed
  or re-started (library: ``Detector.commission``, which re-centres each sensor's level
  term on the mean of those samples). Protocol: **every stream is commissioned on its
  first** ``COMMISSION_ROWS`` **rows** (the detector's warm-up, on which the suite's
  LSTM raises no alarm anyway), whatever they hold: a stream anomalous from its
  first row (CWRU's and the fan's faults, TEP's validation runs) is commissioned on the
  fault, as an operator who believed the machine healthy would. Three designs:
  ``delta-hybrid-commission``, ``delta-hybrid-maha-commission`` and
  ``delta-hybrid-xfit-commission``. One baseline, for a fair comparison:
  ``hotelling-t2-commissioned``, T² with its mean taken from the same first rows (its
  covariance and limit from the fit rows), no alarm on those rows. Expected before the
  run: fewer cross-occasion false alarms on 3W; faults present from the first row missed
  by the level term (CWRU, the fan, TEP validation), so lower scores there. The rule is
  unchanged; every design and baseline is run again on both parts.
"""

from __future__ import annotations

MAX_FALSE_ALARM_RATE = 0.05
TIE_POINTS = 1.0
PRIOR = "delta"
#: Amendment 10: rows at the start of every stream a commissioned method takes as the
#: sensor's own normal (the LSTM's warm-up, ``recipe.WARMUP``).
COMMISSION_ROWS = 20


def choose(validation: dict[str, dict[str, dict]]) -> tuple[str, str]:
    """``(design, reason)`` from ``{design: {dataset: summary}}`` of the validation runs."""

    def mean_nab(design: str) -> float:
        scores = [
            s["nab_standard"] for s in validation[design].values() if s["nab_standard"] is not None
        ]
        return sum(scores) / len(scores)

    def passes(design: str) -> bool:
        return all(
            (s["false_alarm_rate"] or 0.0) <= MAX_FALSE_ALARM_RATE
            for s in validation[design].values()
        )

    pool = [d for d in validation if passes(d)] or list(validation)
    best = max(pool, key=mean_nab)
    if PRIOR in pool and mean_nab(best) - mean_nab(PRIOR) <= TIE_POINTS:
        best = PRIOR
    reason = (
        f"mean validation NAB standard {mean_nab(best):.1f}; "
        + ("passes" if passes(best) else "NO design passes")
        + f" the false-alarm rule (<= {MAX_FALSE_ALARM_RATE:.0%} on every part)"
    )
    return best, reason
