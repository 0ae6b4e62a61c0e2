"""The errors and warnings of a fit, at the bottom of the package: any module may raise them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import EMResult


class NoRealLogarithmError(ValueError):
    """The fitted transition matrix has no real logarithm: no LTI SDE explains it at this step.

    `result` holds the fitted discrete model (an `EMResult` whose `params` is the `LGSSMParams`).
    """

    def __init__(self, message: str, result: EMResult | None = None):
        super().__init__(message)
        self.result = result


class NotPSDError(ValueError):
    """The diffusion covariance Q recovered from the fit is not positive semi-definite.

    `result` holds the fitted discrete model; `Q` the recovered (indefinite) matrix.
    """

    def __init__(self, message: str, result: EMResult | None = None, Q=None):
        super().__init__(message)
        self.result = result
        self.Q = Q


class NyquistWarning(UserWarning):
    """An eigenvalue of the recovered F lies near the branch cut |Im lambda| = pi / dt."""
