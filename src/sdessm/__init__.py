"""sdessm: state-space models whose latent state follows a linear time-invariant SDE.

    x_1 ~ N(mu1, P1),   dx_t = F x_t dt + L dW_t,   y_k ~ N(H x_{t_k} + u, R)

Exact discretisation, Kalman filtering and RTS smoothing, and exact simulation. Public entry
points compute in float64 (enabled for the duration of each call, not globally).
"""

import importlib

from .cache import enable_compilation_cache as enable_compilation_cache
from .comparison import Comparison as Comparison
from .comparison import compare_models as compare_models
from .comparison import plot_comparison as plot_comparison
from .discretize import discretize as discretize
from .discretize import sde_from_discrete as sde_from_discrete
from .errors import NoRealLogarithmError as NoRealLogarithmError
from .errors import NotPSDError as NotPSDError
from .errors import NyquistWarning as NyquistWarning
from .fit import fit_em as fit_em
from .forecast import Forecast as Forecast
from .forecast import PosteriorForecast as PosteriorForecast
from .forecast import forecast as forecast
from .forecast import forecast_posterior as forecast_posterior
from .information import covariance as covariance
from .information import information_criteria as information_criteria
from .information import standard_errors as standard_errors
from .kalman import kalman_filter as kalman_filter
from .kalman import log_likelihood as log_likelihood
from .kalman import rts_smoother as rts_smoother
from .params import LGSSMParams as LGSSMParams
from .params import SDEParams as SDEParams
from .params import discretize_params as discretize_params
from .realisation import subspace_start as subspace_start
from .recursion import FilterResult as FilterResult
from .recursion import SmootherResult as SmootherResult
from .residuals import Innovations as Innovations
from .residuals import ResidualTests as ResidualTests
from .residuals import innovations as innovations
from .residuals import plot_residuals as plot_residuals
from .residuals import residual_tests as residual_tests
from .results import EMResult as EMResult
from .simulate import simulate as simulate

__version__ = "0.1.0"


#: Names whose modules import NumPyro, ArviZ or matplotlib: loaded on first use, so that
#: `import sdessm` (and the command line's first line of output) stays fast.
_LAZY = {
    "fit_nuts": ("infer", "fit_nuts"),
    "pointwise_log_likelihood": ("infer", "pointwise_log_likelihood"),
    "leave_future_out": ("lfo", "leave_future_out"),
    "fit_em_model": ("model_em", "fit_em_model"),
    "LTISDE": ("ppl", "LTISDE"),
    "identifiable": ("diagnostics", "identifiable"),
    "recovery_table": ("diagnostics", "recovery_table"),
    "load_model": ("models", "load"),
}
#: Every submodule, reachable as an attribute after `import sdessm` alone (`sdessm.models.load`).
_SUBMODULES = (
    "cache", "checkpoint", "cli", "commands", "comparison", "compiled", "datasets", "diagnostics",
    "discretize", "em", "em_problem", "errors", "fit", "forecast", "identify", "infer",
    "information", "io",
    "iteration", "kalman", "lfo", "model_em", "models", "moments", "mstep", "newton", "outputs",
    "parallel", "params", "ppl", "priors", "problem", "realisation", "recursion", "report",
    "residuals", "results", "runs", "simulate", "stats", "steady", "summaries",
)  # fmt: skip


def __getattr__(name: str):
    """The names of `_LAZY` and the submodules, imported on first use."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'sdessm' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "EMResult",
    "NoRealLogarithmError",
    "NotPSDError",
    "NyquistWarning",
    "fit_em",
    "sde_from_discrete",
    "Forecast",
    "PosteriorForecast",
    "forecast",
    "forecast_posterior",
    "FilterResult",
    "LGSSMParams",
    "SDEParams",
    "SmootherResult",
    "discretize",
    "discretize_params",
    "kalman_filter",
    "log_likelihood",
    "rts_smoother",
    "innovations",
    "Innovations",
    "residual_tests",
    "ResidualTests",
    "plot_residuals",
    "simulate",
    "standard_errors",
    "covariance",
    "information_criteria",
    "subspace_start",
    "enable_compilation_cache",
    "compare_models",
    "Comparison",
    "plot_comparison",
    *_LAZY,
]
