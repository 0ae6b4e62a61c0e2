"""NUTS on the indoor-CO2 model, continuing the session of `fit_exponential_decay.py`."""

from sdessm.diagnostics import recovery_table
from sdessm.infer import fit_nuts

# every chain starts at the EM estimate; `truth` is attached for the table (omit it for real data)
idata = fit_nuts(
    co2.model, y, times, init=em, truth=truth, num_warmup=500, num_samples=500, num_chains=2
)
table = recovery_table(idata)  # per site: truth, EM, posterior mean, sd, 94% HDI, R-hat, ESS
print(table[["truth", "em", "mean", "sd", "hdi_low", "hdi_high", "r_hat"]].round(2).to_string())
