"""The `sdessm` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _damped_oscillator(omega: float, zeta: float, sigma: float, noise: float):
    import numpy as np

    from .params import SDEParams

    return SDEParams(
        F=np.array([[0.0, 1.0], [-(omega**2), -2.0 * zeta * omega]]),
        L=np.array([[0.0], [sigma]]),
        H=np.array([[1.0, 0.0]]),
        u=np.zeros(1),
        R=np.array([[noise**2]]),
        mu1=np.zeros(2),
        P1=np.eye(2),
    )


def demo(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from .diagnostics import plot_smoothed_states
    from .em import fit_em
    from .io import atomic_path
    from .kalman import rts_smoother
    from .simulate import simulate

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return _fail(f"cannot create output folder {out}: {err.strerror}")
    params = _damped_oscillator(omega=2.0, zeta=0.1, sigma=0.6, noise=0.15)
    times = np.arange(args.num_timesteps) * args.dt
    start = time.perf_counter()
    print(
        f"[1/4] simulating a damped oscillator: T = {args.num_timesteps}, dt = {args.dt}",
        flush=True,
    )
    x, y = simulate(jax.random.key(args.seed), params, times)
    y = np.array(y)
    y[np.random.default_rng(args.seed).uniform(size=len(y)) < args.missing] = np.nan
    print(f"      {np.isnan(y).sum()} of {len(y)} observations removed (missing)", flush=True)
    print("[2/4] Kalman filter + RTS smoother under the true parameters", flush=True)
    smoothed = rts_smoother(params, y, times)
    inside = np.abs(np.asarray(smoothed.smoothed_means) - np.asarray(x)) <= 1.96 * np.sqrt(
        np.diagonal(np.asarray(smoothed.smoothed_covs), axis1=-2, axis2=-1)
    )
    print(
        f"      log-likelihood {float(smoothed.log_likelihood):.3f}; true states inside the 95% "
        f"band: {inside.mean(0).round(3).tolist()} (position, velocity)",
        flush=True,
    )
    print("[3/4] EM from a wrong start (H, u, mu1, P1 known; F, Q, R estimated)", flush=True)
    start_params = params._replace(
        F=np.array([[0.0, 1.0], [-1.0, -1.0]]), L=0.3 * np.eye(2), R=np.array([[0.1]])
    )
    fit = fit_em(start_params, y, times, fixed=("H", "u", "mu1", "P1"), num_iters=args.em_iters)
    true_eig = np.sort_complex(np.linalg.eigvals(np.asarray(params.F)))
    em_eig = np.sort_complex(np.linalg.eigvals(np.asarray(fit.params.F)))
    print(
        f"      {fit.num_iters} iterations ({fit.report['stopped']}); log-likelihood "
        f"{fit.log_likelihoods[0]:.2f} -> {fit.log_likelihood:.2f}"
    )
    print(
        f"      eigenvalues of F: true {np.round(true_eig, 3).tolist()}, "
        f"EM {np.round(em_eig, 3).tolist()}"
    )
    print(
        f"      observation noise sd: true {np.sqrt(float(params.R[0, 0])):.3f}, "
        f"EM {np.sqrt(float(fit.params.R[0, 0])):.3f}"
    )
    print("[4/4] plotting", flush=True)
    fig = plot_smoothed_states(
        times, smoothed, y, x, H=params.H, state_names=["position", "velocity"]
    )
    fig.suptitle("Damped oscillator: data, true states and smoothed states")
    target = out / "smoothed_states.png"
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    except OSError as err:
        return _fail(f"cannot write {target}: {err.strerror}")
    print(f"wrote {target} ({time.perf_counter() - start:.1f} s)")
    return 0


def _fail(message: str) -> int:
    print(f"sdessm: error: {message}", file=sys.stderr)
    return 2


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdessm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo", help="simulate a damped oscillator, smooth it, fit it by EM, plot the result"
    )
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--num-timesteps", type=_positive(int), default=400)
    p.add_argument("--dt", type=_positive(float), default=0.05)
    p.add_argument("--missing", type=float, default=0.1, help="fraction of observations removed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--em-iters", type=_positive(int), default=300, help="most EM iterations")
    p.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the command line is an entry point: float64
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
