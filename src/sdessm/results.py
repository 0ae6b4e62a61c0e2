"""What `fit_em` returns: the estimate, its history, its report and its standard errors."""

from __future__ import annotations

import dataclasses

import numpy as np

from . import information
from .params import LGSSMParams, SDEParams


@dataclasses.dataclass(frozen=True)
class EMResult:
    """What `fit_em` returns.

    Attributes:
        params: the fitted parameters, in the form given (`SDEParams`, `LGSSMParams` or theta).
        discrete: the fitted discrete model on the data's time grid (`A`, `Sigma` per
            transition for irregular steps, with a leading B axis for per-sequence times).
        log_likelihoods: entry k is the exact marginal log-likelihood of the k-th iterate (entry 0
            at `init`); the last entry belongs to `params`.
        converged: whether the estimate is a certified maximum: the observed information is
            positive definite there and a Newton step would gain at most `tol`
            (`report["convergence"]` says which, or why not).
        num_iters: the number of EM iterations made (the Newton finish's in `report["polish"]`).
        report: diagnostics of the fit and of the SDE recovery (eigenvalues of F, most negative
            eigenvalue of Q, Nyquist margin, why EM stopped, the certificate, the gradient norm,
            a flat direction; `log_posteriors` for MAP).
        sde: the fitted `SDEParams` (None for a discrete-only fit).
    """

    params: SDEParams | LGSSMParams
    discrete: LGSSMParams
    log_likelihoods: np.ndarray
    converged: bool
    num_iters: int
    report: dict
    sde: SDEParams | None = None
    _context: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def log_likelihood(self) -> float:
        return float(self.log_likelihoods[-1])

    def standard_errors(self):
        """`sdessm.standard_errors(self)`: standard errors of the free parameters."""
        return information.standard_errors(self)

    def covariance(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """`sdessm.covariance(self)`: `(labels, estimate, cov)` of the free coordinates."""
        return information.covariance(self)

    def information_criteria(self) -> dict:
        """`sdessm.information_criteria(self)`: AIC, AICc and BIC, with the number of
        identified parameters and of observed values they use."""
        return information.information_criteria(self)
