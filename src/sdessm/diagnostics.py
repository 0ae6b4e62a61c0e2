"""Pictures of what the model sees: data, true states and smoothed states with bands."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .kalman import SmootherResult


def plot_smoothed_states(
    times,
    smoothed: SmootherResult,
    y=None,
    x_true=None,
    *,
    H=None,
    level: float = 0.95,
    state_names=None,
) -> Figure:
    """One panel per state: smoothed mean with a `level` band, the true path, and the data.

    Args:
        times: `(T,)` observation times.
        smoothed: an `rts_smoother` result for one sequence.
        y: `(T, p)` observations (NaN = missing), drawn on the panel of each state that `H`
            reads directly (a row of `H` with a single non-zero entry equal to 1).
        x_true: `(T, d)` true states, for simulated data.
        H: the observation matrix that says which states the data show.
        level: coverage of the band (normal quantiles).
        state_names: labels of the states.

    Returns:
        A matplotlib `Figure` (not attached to pyplot; save it with `fig.savefig`).
    """
    from scipy.stats import norm

    times = np.asarray(times)
    means = np.asarray(smoothed.smoothed_means)
    if means.ndim != 2:
        raise ValueError(f"`smoothed` must hold one sequence ((T, d) means); got {means.shape}.")
    T, d = means.shape
    sd = np.sqrt(
        np.clip(np.diagonal(np.asarray(smoothed.smoothed_covs), axis1=-2, axis2=-1), 0, None)
    )
    z = norm.ppf(0.5 + level / 2)
    names = state_names or [f"x[{i}]" for i in range(d)]
    fig = Figure(figsize=(10, 2.6 * d), layout="constrained")
    axes = fig.subplots(d, 1, sharex=True, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        ax.fill_between(
            times,
            means[:, i] - z * sd[:, i],
            means[:, i] + z * sd[:, i],
            color="tab:blue",
            alpha=0.25,
            lw=0,
            label=f"smoothed {level:.0%} band",
        )
        ax.plot(times, means[:, i], color="tab:blue", lw=1.5, label="smoothed mean")
        if x_true is not None:
            ax.plot(times, np.asarray(x_true)[:, i], color="k", lw=1, ls="--", label="true state")
        if y is not None and H is not None:
            Hn = np.asarray(H)
            for j in range(Hn.shape[0]):
                row = Hn[j]
                if np.count_nonzero(row) == 1 and row[i] == 1.0:
                    ax.plot(
                        times,
                        np.asarray(y)[:, j],
                        ".",
                        color="tab:red",
                        ms=3,
                        label=f"observed y[{j}]",
                    )
        ax.set_ylabel(names[i])
        ax.legend(loc="upper right", fontsize="small", ncols=4)
    axes[-1].set_xlabel("time")
    return fig
