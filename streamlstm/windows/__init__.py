"""Window models: classifiers, autoencoders, bidirectional and plain-RNN nets run on streams
exactly as trained, each window of the last ``W`` samples from the zero state every ``K``
samples (see :mod:`streamlstm.window_spec` for the semantics).

>>> import numpy as np, streamlstm as sl
>>> model = sl.random_model(3, [8], output_size=2).replace(
...     metadata={"window": {"length": 4, "hop": 2, "output": "probabilities"}})
>>> out = model.windows().push(["a"] * 6, np.zeros((6, 3), np.float32))
>>> out.end_index.tolist(), out.values.shape
([3, 5], (2, 2))
"""

from ..window_spec import OUTPUTS, WindowSpec
from .bank import WindowBank, WindowOutputs, evaluate_windows

__all__ = ["OUTPUTS", "WindowBank", "WindowOutputs", "WindowSpec", "evaluate_windows"]
