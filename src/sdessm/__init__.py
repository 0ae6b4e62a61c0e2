"""sdessm: state-space models whose latent state follows a linear time-invariant SDE.

    x_1 ~ N(mu1, P1),   dx_t = F x_t dt + L dW_t,   y_k ~ N(H x_{t_k} + u, R)

Exact discretisation, Kalman filtering and RTS smoothing, and exact simulation. Public entry
points compute in float64 (enabled for the duration of each call, not globally).
"""

from .discretize import discretize as discretize
from .discretize import discretize_params as discretize_params
from .em import EMResult as EMResult
from .em import NoRealLogarithmError as NoRealLogarithmError
from .em import NotPSDError as NotPSDError
from .em import NyquistWarning as NyquistWarning
from .em import fit_em as fit_em
from .em import sde_from_discrete as sde_from_discrete
from .forecast import Forecast as Forecast
from .forecast import PosteriorForecast as PosteriorForecast
from .forecast import forecast as forecast
from .forecast import forecast_posterior as forecast_posterior
from .kalman import FilterResult as FilterResult
from .kalman import SmootherResult as SmootherResult
from .kalman import kalman_filter as kalman_filter
from .kalman import log_likelihood as log_likelihood
from .kalman import rts_smoother as rts_smoother
from .params import LGSSMParams as LGSSMParams
from .params import SDEParams as SDEParams
from .realisation import subspace_start as subspace_start
from .simulate import simulate as simulate

__version__ = "0.1.0"


def __getattr__(name: str):
    """`sdessm.ppl` (NumPyro) is imported on first use, not with `import sdessm`."""
    if name == "ppl":
        import importlib

        return importlib.import_module(".ppl", __name__)
    raise AttributeError(f"module 'sdessm' has no attribute {name!r}")


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
    "simulate",
]
