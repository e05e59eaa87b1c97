"""The five-dataset detection-quality suite (run it with ``benchmarks/bench_quality.py``).

One module per job: :mod:`.cases` (the data types every loader returns), one loader per
dataset (:mod:`.threew`, :mod:`.tep`, :mod:`.nab`, :mod:`.vibration`), :mod:`.metrics`
(NAB-style changepoint score, false-alarm rate, misses, delay, point F1),
:mod:`.baselines` (Hotelling T², PCA T²+SPE, rolling z-score, always alarm),
:mod:`.recipe` (the streamlstm detector as a method and the designs tried) and
:mod:`.protocol` (the rules fixed before any result was looked at).
"""
