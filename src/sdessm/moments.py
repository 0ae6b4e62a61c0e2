"""Sample moments of a series in its own units, from which the zoo models take their starts.

Each zoo model's `start_from_data(times, y)` maps these moments to its parameters by the model's
own closed forms (an AR(1) fit for the OU process, the differences of a random walk plus noise
for the local level, the spectral peaks for oscillators), so that EM starts at the scale of the
data whatever its units. `sdessm.fit_em(model, ...)` then keeps the best of a few starts by the
exact log-likelihood (see `sdessm.infer`).

Pairs of observations are taken at consecutive rows: on irregular times the lags are in rows, and
`step` (the median step) converts them to time, which is approximate but only a start.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np


class Moments(NamedTuple):
    """Moments of each column, pooled over sequences, from the rows observed.

    Attributes:
        step: the median time step.
        mean: `(p,)` sample means.
        autocovariance: `(lags + 1, p)`: the variance, then the covariance of values `k` rows
            apart, k = 1..lags (NaN where no pair is observed).
        first: `(p,)` the first observed value of each column (of the first sequence with one).
    """

    step: float
    mean: np.ndarray
    autocovariance: np.ndarray
    first: np.ndarray

    @property
    def variance(self) -> np.ndarray:
        return self.autocovariance[0]

    @property
    def autocorrelation(self) -> np.ndarray:
        """`(lags + 1, p)`, 1 at lag 0."""
        return self.autocovariance / self.autocovariance[0]


def _sequences(times, y):
    y = np.asarray(y, dtype=float)
    y3 = y if y.ndim == 3 else y.reshape((1,) + y.shape[-2:]) if y.ndim == 2 else None
    if y3 is None:
        raise ValueError(f"`y` must be (T, p) or (B, T, p); got shape {y.shape}.")
    t = np.asarray(times, dtype=float)
    return np.broadcast_to(t, y3.shape[:2]), y3


def moments(times, y, lags: int = 2) -> Moments:
    """Mean, autocovariances at lags 0..`lags` (in rows) and the median step of `y`.

    Examples:
        >>> import numpy as np
        >>> m = moments(np.arange(5.0), np.array([[1.0], [3.0], [np.nan], [3.0], [1.0]]))
        >>> m.step, m.mean.tolist(), m.first.tolist()
        (1.0, [2.0], [1.0])
        >>> m.autocovariance[:, 0].tolist()  # only pairs with both values observed
        [1.0, -1.0, 1.0]
    """
    t, y3 = _sequences(times, y)
    steps = np.diff(t, axis=-1)
    step = float(np.median(steps)) if steps.size else 1.0
    observed = np.isfinite(y3)
    if not observed.any():
        raise ValueError("`y` has no observed value.")
    mean = np.nanmean(np.where(observed, y3, np.nan), axis=(0, 1))
    centred = y3 - mean
    autocovariance = []
    for k in range(lags + 1):
        products = centred[:, k:] * centred[:, : centred.shape[1] - k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column with no pair: NaN
            autocovariance.append(np.nanmean(products, axis=(0, 1)))
    first = np.array(
        [y3[seen][0, j] if (seen := observed[..., j]).any() else np.nan for j in range(y3.shape[2])]
    )
    return Moments(step, mean, np.array(autocovariance), first)


def differences(times, y):
    """`(times[1:], y[1:] - y[:-1])` along the time axis of each sequence (NaN where either is
    missing): the increments of a random walk."""
    t, y3 = _sequences(times, y)
    return t[:, 1:], np.diff(y3, axis=1)


def spectral_peaks(times, y, count: int = 1, column: int = 0) -> np.ndarray:
    """The angular frequencies (radians per unit time) of the `count` highest local maxima of the
    Lomb-Scargle periodogram of one column (first sequence; irregular times and missing values
    allowed), increasing; between 2 pi / span and the Nyquist frequency pi / step.

    Examples:
        >>> import numpy as np
        >>> t = np.arange(400) * 0.1
        >>> y = np.sin(2.0 * t)[:, None] + 0.3 * np.sin(7.0 * t)[:, None]
        >>> np.round(spectral_peaks(t, y, 2), 1).tolist()
        [2.0, 7.0]
    """
    from scipy.signal import find_peaks, lombscargle

    t, y3 = _sequences(times, y)
    t, v = t[0], y3[0, :, column]
    keep = np.isfinite(v)
    t, v = t[keep], v[keep] - np.mean(v[keep])
    if len(t) < 4:
        return np.full(count, np.nan)
    span, step = t[-1] - t[0], float(np.median(np.diff(t)))
    grid = np.linspace(2 * np.pi / span, np.pi / step, 4 * len(t))
    power = lombscargle(t, v, grid)
    found, _ = find_peaks(np.concatenate([[-np.inf], power, [-np.inf]]))
    found = found - 1
    best = found[np.argsort(-power[found])][:count]
    peaks = np.sort(grid[best])
    if len(peaks) < count:  # fewer peaks than asked: spread the rest above the highest
        top = peaks[-1] if len(peaks) else grid[0]
        peaks = np.concatenate([peaks, top * 2.0 ** np.arange(1, count - len(peaks) + 1)])
    return peaks
