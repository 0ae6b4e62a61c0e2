# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which model? CARMA orders for the Nile and the sunspots, by information criteria
#
# A continuous-time ARMA model, CARMA(p, q), is a linear SDE of p states observed in noise:
# the autoregressive order p sets how many modes (decays, oscillations) the series has, the
# moving-average order q < p how a shock enters them. Choosing (p, q) is the first question on
# any real series. `sdessm.compare_models` (and `sdessm compare` on the command line) fits each
# candidate by EM, reads its information criteria (AIC, BIC, with k the parameters the data
# identify) and its residual checks, and chooses the lowest BIC among the fits certified as a
# maximum, saying why.
#
# Two public-domain series that ship with sdessm: the yearly flow of the Nile at Aswan
# (1871-1970, in $10^8\,m^3$) and the yearly sunspot numbers (1700-2008).

# %%
# %matplotlib inline
import jax
import numpy as np
import pandas as pd

import sdessm
from sdessm import datasets
from sdessm.comparison import choose, plot_comparison

jax.config.update("jax_enable_x64", True)
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)
carma = sdessm.load_model("carma")
COLUMNS = ["log_likelihood", "k", "aic", "bic", "delta_bic", "converged", "ljung_box_p",
           "jarque_bera_p", "chosen"]  # fmt: skip

# %% [markdown]
# ## The Nile: a level that wanders, or one that returns?
#
# Durbin and Koopman's textbook fits the Nile with a local level: a random walk seen in noise.
# Its continuous-time rivals are the OU process (CARMA(1, 0): a level pulled back to a mean)
# and CARMA(2, 0) and CARMA(2, 1) (two modes). Time is in years, the flow in its own units.

# %%
nile = datasets.load("nile")
years = nile["year"].to_numpy(dtype=float)
flow = nile[["volume"]].to_numpy(dtype=float)
candidates = [
    sdessm.load_model("local_level"),
    sdessm.load_model("ou"),
    (carma, {"p": 2, "q": 0}),
    (carma, {"p": 2, "q": 1}),
]
nile_choice = sdessm.compare_models(candidates, flow, years, progress=False)
print(nile_choice.table()[COLUMNS].round(3))
print()
print(nile_choice.why)

# %% [markdown]
# The local level wins on BIC: the OU adds a mean and a rate of return, and the likelihood
# gains too little for them (the fitted rate is slow next to a century of data, so the OU is
# nearly a random walk). CARMA(2, 0) reaches the OU's likelihood and no more: its second mode is
# not identified, which the fit reports instead of claiming convergence, so it is left out of
# the choice. The residual checks of the chosen model pass.

# %%
plot_comparison(nile_choice)

# %%
chosen = nile_choice.fits[nile_choice.choice]
sdessm.plot_residuals(sdessm.innovations(chosen.sde, flow, years).standardized, years)

# %% [markdown]
# ## The sunspots: how many modes?
#
# The square root of the sunspot numbers (the usual variance-stabilising transform of counts)
# oscillates with a period near 11 years. CARMA(1, 0) has no oscillation; CARMA(2, 0) is a
# damped oscillator driven by noise; higher orders add a second mode. Seven candidates, fitted
# in two groups and chosen among together.

# %%
spots = datasets.load("sunspots")
spot_years = spots["year"].to_numpy(dtype=float)
root = np.sqrt(spots[["sunspots"]].to_numpy(dtype=float))
low = sdessm.compare_models(
    [(carma, {"p": p, "q": q}) for p, q in [(1, 0), (2, 0), (2, 1), (3, 0)]],
    root, spot_years, progress=False,
)  # fmt: skip

# %%
high = sdessm.compare_models(
    [(carma, {"p": p, "q": q}) for p, q in [(3, 1), (4, 0), (4, 1)]],
    root, spot_years, progress=False,
)  # fmt: skip
spot_choice = choose(low.candidates + high.candidates)
print(spot_choice.table()[COLUMNS].round(3))
print()
print(spot_choice.why)

# %% [markdown]
# CARMA(2, 0), the damped oscillator, is chosen. The table shows what the certificate is for:
#
# - CARMA(3, 0) and CARMA(3, 1) end at the log-likelihood of CARMA(2, 0) and CARMA(2, 1) with
#   their extra real mode on a boundary (flat directions), so they are not certified and not
#   considered: the data give the third state nothing to do.
# - CARMA(4, 0) nests CARMA(2, 0) and gains 1.8 in log-likelihood with a second, overdamped
#   factor: certified, but its BIC is higher by 7.9. That fit needs EM's second start. From the
#   periodogram's start, both frequencies on the one 11-year peak, EM stops at -513.3, a local
#   maximum below CARMA(2, 0); CARMA also starts EM from the roots of an AR(4) fit
#   (`more_starts_from_data`) and keeps the better end (`report["starts"]` lists both runs).
# - CARMA(4, 1) reaches a higher log-likelihood than CARMA(2, 0) (about 5 units) with its second
#   oscillation's frequency not identified. Its AIC is lower; even counted with all its
#   parameters its BIC would not be.
#
# The residuals of the chosen model fail the checks: serial correlation is left (the sunspot
# cycle is not linear: it rises faster than it decays, which no linear Gaussian model
# reproduces) and the errors are not normal. The comparison says so in its notes; the
# residual plot below shows where.

# %%
plot_comparison(spot_choice)

# %%
chosen = spot_choice.fits[spot_choice.choice]
sdessm.plot_residuals(sdessm.innovations(chosen.sde, root, spot_years).standardized, spot_years)

# %% [markdown]
# ## On the command line
#
# The same comparison, written to a folder with the table, the choice and a report:
#
# ```bash
# sdessm data nile --out nile.csv
# sdessm compare nile.csv --time-column year --models local_level,ou,carma:2,carma:2:1
# ```
#
# A Bayesian comparison of the finalists reads the pointwise log-likelihood that
# `sdessm.fit_nuts` stores (`az.compare`), or, better on a time series,
# `sdessm.leave_future_out` (see [EM and NUTS](../bayes.md)).
