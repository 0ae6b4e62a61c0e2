"""`fit_em`: the one entry point of EM, whatever the model is given as.

Parameters (`SDEParams`, `LGSSMParams`, or theta with `structure`) go to the EM loop
(`sdessm.em.run_em`); a NumPyro model goes to `sdessm.model_em.fit_em_model`, which traces it into
a structure and a start and runs the same loop. Choosing here, above both, keeps the layers one
way: `em` never imports the NumPyro layer.
"""

from __future__ import annotations

from ._checks import float64
from .em import run_em
from .params import LGSSMParams, SDEParams
from .results import EMResult

#: The arguments that apply to a NumPyro model only.
MODEL_ONLY = ("init", "objective", "model_kwargs")


@float64
def fit_em(
    model,
    y,
    times=None,
    *,
    init=None,
    objective: str | None = None,
    model_kwargs: dict | None = None,
    dt: float | None = None,
    inputs=None,
    num_iters: int = 500,
    tol: float = 1e-6,
    finish: str = "polish",
    fixed=None,
    R_structure: str = "full",
    emissions: str = "shared",
    structure=None,
    log_prior=None,
    psd: str = "report",
    mstep_iters: int = 30,
    accelerate: bool = True,
    progress: bool = True,
    checkpoint=None,
    checkpoint_every: int = 10,
    devices=None,
) -> EMResult:
    r"""Maximum-likelihood (or MAP) estimates by EM.

    `model` is either the starting parameters (`SDEParams`, `LGSSMParams`, or theta with
    `structure`) or a NumPyro model function with one `LTISDE` site. Paths, chosen from the
    arguments:

    - a NumPyro model `model(times, y=None, **model_kwargs)`: generalized EM over its parameter
      sites (`objective="mle"` or `"map"`, the mode of the posterior density of the sites in
      their own coordinates), started at `init` (a dict of site values, or None for the default
      start: the best by exact log-likelihood of the prior medians, the model's
      `start_from_data` and perturbations of it; with no `init`, EM also runs from each start
      of the model's `more_starts_from_data`, if any, and the best fit is kept, its runs in
      `report["starts"]`); `params` of the result is a dict of site values. The unconstrained
      zoo model (its module defines `EM_CLOSED_FORM` and `from_sde`) gets the closed form for
      MLE on uniform steps. See `sdessm.infer`.

    - `SDEParams` with uniform steps: the closed-form M-step of the derivation in the discrete
      model, then F and Q recovered by the block matrix logarithm (`sde_from_discrete`).
    - `SDEParams` with irregular `times` (or a fixed diffusion): generalized EM, the transition
      M-step numerical over F and L (statistics grouped by distinct step), the rest closed form.
      Q = L L^T keeps the shape of the given L: an `(d, m)` L with m < d fits a rank-m
      diffusion (an oscillator driven through its velocity only, say); give a `(d, d)` L for a
      free Q. The closed form (uniform steps) always returns a full `(d, d)` factor.
    - `LGSSMParams`: the discrete model alone, closed form.
    - `structure` given: `init` is a pytree `theta` and `structure(theta)` an `SDEParams`; every
      M-step maximises the expected complete-data log-likelihood over theta numerically
      (L-BFGS, warm-started, never lowering it). With `log_prior(theta)` it is MAP.
    - `log_prior` with an `SDEParams` and no `structure`: MAP over all free fields (R and P1
      through Cholesky factors); `log_prior` receives the `SDEParams`.

    Args:
        model (SDEParams | LGSSMParams | PyTree | Callable): starting parameters, or a NumPyro
            model (see above).
        y (ArrayLike): `(T, p)` or `(B, T, p)` observations; NaN = missing (treated as latent
            in the E-step). Trailing all-NaN rows of a sequence are padding and count for
            nothing.
        times (ArrayLike | None): `(T,)` or `(B, T)` observation times (continuous-time
            paths).
        dt: a uniform step instead of `times`.
        inputs (ArrayLike | None): known inputs `(T, m)` shared by the sequences, or
            `(B, T, m)`, for a start with input gains `B` (drift) and/or `D` (observations)
            (see docs/conventions.md, "Known inputs"). On uniform steps the M-step regresses
            x_{k+1} on [x_k; v_k] and y_k on [x_k; 1; v_k], so `[A B_k]` and `[H u D]` are
            closed form, and B is recovered from `B_k = int_0^dt e^{F s} ds B`; on irregular
            steps (or with `L`, or `B` without `F`, held) B joins the numerical transition
            M-step, and a `structure` reaches B and D through its parameters. A gain left None
            is no part of the model. Not with `log_prior` on `SDEParams` (MAP without
            `structure`) or per-step emissions. A NumPyro model takes its inputs through
            `model_kwargs` (`LTISDE(..., inputs=)`).
        num_iters: most EM iterations.
        tol: the accuracy asked for, in log-likelihood units (absolute, whatever the length of
            the series). EM stops when an iteration gains less (with `finish="polish"`: less
            than `HANDOVER` = 1e-3, or when it crawls, where EM is slowest); the fit has
            `converged` only when the observed information at the estimate is positive definite
            and a Newton step would gain at most `tol` (`report["convergence"]` says which, or
            why not).
        finish: what follows EM. `"polish"`: maximise the exact objective from the EM estimate
            by quasi-Newton steps (BFGS from the exact observed information, JAX gradients; a
            step is kept only if it does not lower the objective, and saddle points are left)
            in the free coordinates of the standard errors (EM is robust far from the optimum
            and slow near it; Newton is the opposite), then certify the result. `"certify"`:
            EM's estimate as it is, certified or not. `"none"`: EM's estimate, unchecked
            (`converged` is False, and the report says so): for studying EM itself.
        fixed (Sequence[str] | None): field names held at their `init` value, e.g. `("H", "u")`;
            `"Q"` and `"L"` both name the diffusion. Defaults to `("P1",)` for one sequence
            (where the M-step would collapse P1 onto the smoothed covariance of a single draw)
            and `()` for several; an explicit value replaces the default. With the default,
            a start whose free fields the law of y cannot identify (a change of basis of the
            state, say, with H free) is refused before EM, naming the direction and the fields
            to hold (`sdessm.identify`); an explicit `fixed` is run as asked. Not with
            `structure` (keep constants inside it).
        R_structure: `"full"`, `"diagonal"` or `"isotropic"` observation noise (closed form).
        emissions: `"shared"` or `"per_step"` (own H_k, u_k, R_k per time step, learned from B
            i.i.d. sequences).
        structure (Callable | None): a function theta -> `SDEParams` (jittable).
        log_prior (Callable | None): a function of theta (or of the `SDEParams`) giving a
            log-density: MAP.
        psd: when the recovered Q is not PSD: `"report"` raises `NotPSDError` with the fit
            attached; `"nearest"` replaces Q by the nearest PSD matrix, flagged in the report.
        mstep_iters: L-BFGS steps per numerical M-step.
        accelerate: SQUAREM extrapolation (Varadhan and Roland 2008), kept monotone, with a
            step bound that grows from plain EM while extrapolation helps: one iteration is
            then three E-steps, and EM's crawl along weakly identified directions (an offset u
            traded against the latent level, a structured damping) is cut by orders of
            magnitude. It runs on the numerical paths (`structure`, `log_prior`, NumPyro
            models) and, when `finish` is not "polish", on the closed-form and
            numerical-transitions paths too (extrapolating only to positive semi-definite
            covariances); with "polish" those hand the crawl to the quasi-Newton finish,
            which is faster there. `False` gives plain EM, iterate for iterate.
        progress: show a progress bar.
        checkpoint (str | os.PathLike | None): a file that keeps the run: every
            `checkpoint_every` iterations and at the end, the iterate and the history are written
            to it atomically (a temporary file, then one rename). If the file exists when
            `fit_em` starts, the run resumes from it and ends exactly as an uninterrupted run
            would (EM is deterministic); a finished run is returned as it was, or continued if
            `num_iters` is now larger. A checkpoint of another fit (other data, times, start or
            settings) is refused with a ValueError. For `structure` and `log_prior` the
            functions themselves cannot be compared: resume with the same ones.
        checkpoint_every: iterations between checkpoint writes.
        devices (str | Sequence[jax.Device] | None): spread the sequences of `y` (B, T, p) over
            devices: `"all"` (every device of every process, `jax.devices()`) or a list of
            devices; None keeps them on the default device. B must be a multiple of the number
            of devices. The E-step statistics are sums over sequences, so each device smooths
            its share and the sums are reduced across devices (XLA inserts the all-reduce); the
            result equals the one-device fit to round-off.
        init (dict | None): starting site values of a NumPyro model (only with a model).
        objective: `"mle"` (default) or `"map"`, for a NumPyro model.
        model_kwargs: further keyword arguments of a NumPyro model.

    Returns:
        An `EMResult`.

    Raises:
        NoRealLogarithmError: the fitted A has no real logarithm (SDE recovery).
        NotPSDError: the recovered Q is indefinite and `psd="report"`.
    """
    arguments = dict(locals())
    if callable(model) and not isinstance(model, (SDEParams, LGSSMParams)):
        from .model_em import fit_em_model  # the NumPyro layer, imported when a model is given

        fields = dict(dt=dt, fixed=fixed, structure=structure, log_prior=log_prior, inputs=inputs)
        given = sorted(k for k, v in fields.items() if v is not None)
        if given or R_structure != "full" or emissions != "shared":
            raise ValueError(
                f"{given or ['R_structure/emissions']} do not apply to a NumPyro model: express "
                "constants and structure in the model itself."
            )
        return fit_em_model(
            model,
            y,
            times,
            objective=objective or "mle",
            init=init,
            model_kwargs=model_kwargs,
            num_iters=num_iters,
            tol=tol,
            finish=finish,
            psd=psd,
            mstep_iters=mstep_iters,
            progress=progress,
            accelerate=accelerate,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            devices=devices,
        )
    if init is not None or objective is not None or model_kwargs is not None:
        raise ValueError(
            "`init`, `objective` and `model_kwargs` apply to a NumPyro model; with parameters, "
            "pass the starting values as the first argument (and `log_prior` for MAP)."
        )
    options = {k: v for k, v in arguments.items() if k not in MODEL_ONLY + ("model", "y", "times")}
    return run_em(model, y, times, **options)
