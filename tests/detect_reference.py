"""A slow, plain-Python/NumPy detector used as the oracle for the fused compiled path.

It shares no code with ``streamlstm.detect`` beyond reading the same calibration dict and
feature declaration: the LSTM forward pass, features, scores and the alert state machine
are written out again here, step by step.
"""

from __future__ import annotations

import math

import numpy as np


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def model_step(model, state, x):
    """One float64 forward step of an LSTM/linear-head model; returns (new_state, out)."""
    xin = np.asarray(x, np.float64)
    if model.input_norm is not None:
        xin = (xin - model.input_norm.mean) / model.input_norm.std
    new_state = []
    for layer, (h, c) in zip(model.layers, state, strict=True):
        gates = layer.w_ih @ xin + layer.b_ih + layer.w_hh @ h + layer.b_hh
        hidden = layer.hidden_size
        i, f = _sigmoid(gates[:hidden]), _sigmoid(gates[hidden : 2 * hidden])
        g, o = np.tanh(gates[2 * hidden : 3 * hidden]), _sigmoid(gates[3 * hidden :])
        c = f * c + i * g
        h = o * np.tanh(c)
        new_state.append((h, c))
        xin = h
    for dense in model.head:
        assert dense.activation == "linear"
        xin = dense.weight @ xin + dense.bias
    if model.output_norm is not None:
        xin = xin * model.output_norm.std + model.output_norm.mean
    return new_state, xin


def window_stats(window, stats):
    """Feature vector of a (window, A) array, axis-major, as documented in features.py."""
    out = []
    axes = window.shape[1]
    for a in range(axes):
        v = window[:, a]
        mean = v.mean()
        var = ((v - mean) ** 2).mean()
        rms = math.sqrt((v**2).mean())
        peak = np.abs(v).max()
        d = v - mean
        w = window[:, (a + 1) % axes] - window[:, (a + 1) % axes].mean()
        both = (d @ d) * (w @ w)
        table = {
            "mean": mean,
            "std": math.sqrt(var),
            "rms": rms,
            "peak": peak,
            "crest": peak / rms if rms > 0 else 0.0,
            "kurtosis": ((v - mean) ** 4).mean() / var**2 if var > 0 else 0.0,
            "log_rms": math.log10(rms + 1e-12),
            "log_std": math.log10(math.sqrt(var) + 1e-12),
            "acf1": (d[1:] @ d[:-1]) / (d @ d) if var > 0 else 0.0,
            "corr_next": (d @ w) / math.sqrt(both) if both > 0 else 0.0,
        }
        out += [table[s] for s in stats]
    return np.asarray(out)


class ReferenceDetector:
    """Same contract as ``Detector.update`` (scores and (sensor, kind, t, peak, duration))."""

    def __init__(self, model, **overrides):
        cal = dict(model.calibration)
        # Durations given with their stored unit, under the stored keys.
        renamed = {"warmup_steps": "warmup", "debounce_steps": "debounce", "quiet_s": "quiet_time"}
        overrides = {renamed.get(k, k): v for k, v in overrides.items()}
        if "margin" in overrides:
            cal["threshold"] = cal["quantile_score"] * overrides.pop("margin")
        cal.update(overrides)
        self.model, self.cal = model, cal
        self.features = model.metadata.get("features")
        self.sensors = {}

    def _fresh(self):
        state = [(np.zeros(l.output_size), np.zeros(l.hidden_size)) for l in self.model.layers]
        return {
            "state": state,
            "pred": None,
            "score": None,
            "steps": 0,
            "above": 0,
            "alert": False,
            "peak": 0.0,
            "start": 0.0,
            "below": None,
            "window": [],
            "since": 0,
            "rejected": 0,
            "filled": 0,
            "offset": 0.0,
        }

    def update(self, sensors, samples, times, alert=True):
        scores, events = [], []
        for sensor, x, t in zip(sensors, np.asarray(samples, np.float64), times, strict=True):
            s = self.sensors.setdefault(sensor, self._fresh())
            scores.append(self._one(s, sensor, x, float(t), events, alert))
        return np.asarray(scores), events

    def _one(self, s, sensor, x, t, events, alert):
        current = lambda: np.nan if s["score"] is None else s["score"]  # noqa: E731
        cal = self.cal
        dtype = self.model.dtype
        # Raw-input residual models fill missing/masked channels; everything else rejects.
        per_channel = not self.features and cal["score"] == "residual"
        mask = np.asarray(cal.get("mask", np.ones(len(x))), np.float64)
        usable = (mask != 0) & np.isfinite(x) if per_channel else np.ones(len(x), bool)
        complete = (
            usable.any() and not np.isinf(x[mask != 0]).any()
            if per_channel
            else np.all(np.isfinite(x))
        )
        if not (complete and math.isfinite(t)):
            s["rejected"] += 1
            s["pred"] = None
            return np.nan
        if per_channel:
            fill = np.asarray(cal["fill"], np.float64)
            substitute = fill if s["pred"] is None else np.where(mask == 0, fill, s["pred"])
            if ((mask != 0) & ~np.isfinite(x)).any():
                s["filled"] += 1
            x = np.where(usable, x, substitute)
        x = x.astype(dtype).astype(np.float64)
        if self.features:
            spec = self.features
            s["window"] = (s["window"] + [x])[-spec["window"] :]
            s["since"] += 1
            if len(s["window"]) < spec["window"] or s["since"] < spec["hop"]:
                return current()
            s["since"] = 0
            x = window_stats(np.asarray(s["window"]), spec["stats"])
            x = x.astype(self.model.dtype).astype(np.float64)
            usable = np.ones(len(x), bool)
        raw = None
        if cal["score"] == "residual" and s["pred"] is not None:
            err = np.where(usable, x - s["pred"] - np.asarray(cal["center"]), 0.0)
            z = np.asarray(cal["whiten"]) @ err
            if "level_whiten" in cal:
                # The level centre, moved by the sensor's adapted offset (drift adaptation).
                level = np.where(usable, x - np.asarray(cal["level_center"]) - s["offset"], 0.0)
                z = np.concatenate([z, np.asarray(cal["level_whiten"]) @ level])
            if cal.get("pool", "rms") == "max":
                # The largest whitened component, level term included.
                raw = float(np.max(np.abs(z)))
            else:
                # Residual scale: root mean square over the channels scored for this sample.
                raw = math.sqrt(float(z @ z) / int(usable.sum()))
        s["state"], out = model_step(self.model, s["state"], x)
        s["steps"] += 1
        if cal["score"] == "direct":
            raw = float(out[cal.get("score_index", 0)])
        else:
            out = out.astype(dtype)
            if cal.get("target") == "delta":
                out = out + x.astype(dtype)
            s["pred"] = out.astype(np.float64)
        if raw is not None:
            a = cal["alpha"]
            s["score"] = raw if s["score"] is None else a * raw + (1 - a) * s["score"]
            if alert:
                self._machine(s, sensor, s["score"], t, events)
            alpha = cal.get("level_alpha", 0.0) if "level_center" in cal else 0.0
            if alpha and not s["alert"] and s["score"] <= cal["threshold"]:
                # Guarded drift adaptation: towards the input, within the bound.
                limit = cal["level_bound"] * np.asarray(cal["level_scale"])
                target = x - np.asarray(cal["level_center"])
                moved = s["offset"] + alpha * (target - s["offset"])
                s["offset"] = np.where(usable, np.clip(moved, -limit, limit), s["offset"])
        return current()

    def _machine(self, s, sensor, score, t, events):
        cal = self.cal
        if s["steps"] <= cal["warmup"]:
            s["above"] = 0
            return
        if not s["alert"]:
            s["above"] = s["above"] + 1 if score > cal["threshold"] else 0
            if s["above"] >= cal["debounce"]:
                s.update(alert=True, start=t, peak=score, below=None)
                events.append((sensor, "start", t, score, 0.0))
            return
        s["peak"] = max(s["peak"], score)
        baseline = min(cal.get("baseline", 0.0), cal["threshold"])
        if score < baseline + cal["hysteresis"] * (cal["threshold"] - baseline):
            if s["below"] is None:
                s["below"] = t
            if t - s["below"] >= cal["quiet_time"]:
                s.update(alert=False, above=0, below=None)
                events.append((sensor, "end", t, s["peak"], t - s["start"]))
        else:
            s["below"] = None
