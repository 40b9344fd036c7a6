"""The statistics behind calibrated early stopping (hpo.tuning.calibrated), without Ray.

How well does a signal available at a rung rank configs by their final score, and how far off can a
prediction of the final score be? Spearman's rho with a one-sided Fisher-z lower bound; a small
ridge regression of the final score on the config (knobs in [0, 1]) and the rung score, with
closed-form leave-one-out predictions (so its rank check is honest for a fixed penalty); the
split-conformal quantile of its leave-one-out misses as the margin of a cut. Also what the report
reads back: the scheduler's per-rung stats in `CALIBRATION_FILE` beside Ray's results (JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpo.trials import CALIBRATION_FILE

PASS, RAW, PREDICTED = "pass", "raw", "predicted"
MODE_CODE = {PASS: 0, RAW: 1, PREDICTED: 2}


@dataclass
class RungStats:
    """What the scheduler last concluded at one rung, and what it did there."""
    n: int = 0                       # completed trials the check used
    rho_raw: float = math.nan
    rho_pred: float = math.nan
    lb_raw: float = math.nan         # lower confidence bounds
    lb_pred: float = math.nan
    mode: str = PASS
    cut: int = 0
    cut_raw: int = 0                 # of which cut on the raw score (the rest on the prediction)
    kept: int = 0                    # trials that reached the rung and went on (audits included)

    def line(self, rung: int) -> str:
        verb = {PASS: "passed (no cut)", RAW: "cut on the raw score", PREDICTED: "cut on the predicted final"}
        return (f"calibrated stopping at validation {rung}: {verb[self.mode]}; rho(raw, final) = {_f(self.rho_raw)} "
                f"[lower bound {_f(self.lb_raw)}], rho(predicted, final) = {_f(self.rho_pred)} "
                f"[{_f(self.lb_pred)}] over {self.n} full curves; {self.cut} cut ({self.cut_raw} on the raw score), "
                f"{self.kept} went on")


def _f(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks; NaN when either side is constant or too short."""
    from scipy.stats import rankdata

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def lower_bound(rho: float, n: int, confidence: float) -> float:
    """One-sided lower confidence bound of a rank correlation (Fisher z, se 1/sqrt(n-3))."""
    from scipy.stats import norm

    if not math.isfinite(rho) or n < 4:
        return math.nan
    z = math.atanh(min(max(rho, -0.999999), 0.999999))
    return math.tanh(z - norm.ppf(confidence) / math.sqrt(n - 3))


def features(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[x, s, x*s, x^2] for configs x (n, d) in [0, 1] and standardised rung scores s (n,)."""
    s = s[:, None]
    return np.hstack([x, s, x * s, x ** 2])


class RidgeLOO:
    """Ridge regression on standardised features, with closed-form leave-one-out predictions."""

    def __init__(self, X: np.ndarray, y: np.ndarray, penalty: float = 1.0):
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-9
        Z = (X - self.mu) / self.sd
        self.ym = y.mean()
        A = Z.T @ Z + penalty * np.eye(Z.shape[1])
        self.w = np.linalg.solve(A, Z.T @ (y - self.ym))
        hat = np.einsum("ij,ji->i", Z, np.linalg.solve(A, Z.T))      # leverages (intercept via centring)
        fitted = Z @ self.w + self.ym
        h = np.clip(hat + 1.0 / len(y), 0, 0.99)
        self.loo = y - (y - fitted) / (1 - h)                           # leave-one-out predictions

    def predict(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu) / self.sd) @ self.w + self.ym


def conformal_margin(residuals: np.ndarray, tail: float) -> float:
    """The ceil((n+1) tail)-th smallest |residual| (split-conformal); the largest when n is small."""
    r = np.sort(np.abs(residuals))
    k = min(len(r), math.ceil((len(r) + 1) * tail)) - 1
    return float(r[max(k, 0)])


def unit_encoder(distributions: dict[str, Any]) -> Callable[[dict], list[float]]:
    """config (dotted keys, or the searcher's flat params) -> its knobs in [0, 1] (log knobs on their log
    scale, categoricals by index / (choices - 1)); a knob the config lacks is 0.5."""
    from hpo.config import get_key, has_key

    def encode(config: dict) -> list[float]:
        out = []
        for key, dist in distributions.items():
            if key in config:
                value = config[key]
            elif has_key(config, key):
                value = get_key(config, key)
            else:
                out.append(0.5)
                continue
            u = to_unit(dist, value)
            out.append(0.5 if math.isnan(u) else u)
        return out

    return encode


def to_unit(dist, value) -> float:
    """A value's position in [0, 1] within its Optuna distribution (NaN if unknown)."""
    import optuna

    if value is None:
        return math.nan
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        if value not in dist.choices:
            return math.nan
        return dist.choices.index(value) / max(1, len(dist.choices) - 1)
    low, high = dist.low, dist.high
    if getattr(dist, "log", False):
        low, high, value = math.log(low), math.log(high), math.log(value)
    return 0.0 if high == low else (value - low) / (high - low)


def read_rung_stats(exp_dir: Path) -> dict[int, RungStats]:
    """Per-rung stats a search's calibrated scheduler left beside Ray's results ({} if none)."""
    path = Path(exp_dir) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    state = json.loads(path.read_text())
    return {int(k): RungStats(**v) for k, v in state.get("rungs", {}).items()}
