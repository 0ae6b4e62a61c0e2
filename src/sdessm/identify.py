"""Whether the free fields of a start are identified: judged before EM, from the model alone.

A change of basis of the state, x -> T x (F -> T F T^-1, Q -> T Q T^T, H -> H T^-1, mu1 -> T mu1,
P1 -> T P1 T^T), leaves the law of y unchanged; so does any direction along which a model has
more parameters than its law has. Along such a direction EM has no unique answer and the
estimate no standard errors, whatever the data. The test: the Fisher information of the law of
the first K observations (a dense Gaussian; an order-d model shows its dynamics within 2d steps,
and a direction that leaves the law of a long series unchanged leaves that of its start
unchanged), by central differences, scaled to unit diagonal, at a generic point near the start
(a start that happens to be special, F = 0 or mu1 = 0, is not judged by itself). A held `P1`
pins a change of basis only through x_1, one observation's worth of information however long
the series, so it is judged as free.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .params import SDEParams

#: At most `STEPS` + 2d observation times and `VALUES` numbers in the stretch judged.
STEPS, VALUES = 4, 96
#: A direction is unidentified when the scaled information has an eigenvalue below this.
RTOL = 1e-8
#: Relative step of the central differences.
STEP = 1e-6
#: Most free coordinates judged (more are left to the certificate at the end of the fit).
MAX_COORDINATES = 200
#: Fields tried, in this order, when suggesting which to hold (not mu1 or P1: holding them pins
#: a direction only through the first observations; not the drift, whose structure is the point
#: of the model: a drift that needs it is said to need structure).
CANDIDATES = ("H", "u", "R", "Q", "Sigma")
#: Fields held as symmetric matrices: the lower triangle is their free coordinates.
SYMMETRIC = ("Q", "Sigma", "R", "P1")


def _fields(params) -> dict[str, np.ndarray]:
    fields = {k: np.array(v, dtype=float) for k, v in params._asdict().items() if v is not None}
    if isinstance(params, SDEParams):
        L = fields.pop("L")
        fields = {"F": fields.pop("F"), "Q": L @ L.T, **fields}
    return fields


def _generic(fields, held, R_structure: str, rng) -> dict[str, np.ndarray]:
    """The free fields moved by a pseudo-random tenth of their scale (covariances kept
    positive definite)."""
    out = dict(fields)
    for name, x in fields.items():
        if name in held or (name == "R" and R_structure != "full"):
            continue
        scale = np.abs(np.diag(x)).mean() if name in SYMMETRIC else np.abs(x).max()
        scale = scale if scale > 0 else 1.0
        if name in SYMMETRIC:
            M = np.eye(len(x)) + 0.1 * rng.standard_normal(x.shape)
            out[name] = M @ x @ M.T + 0.01 * scale * np.eye(len(x))
        else:
            out[name] = x + 0.1 * scale * rng.standard_normal(x.shape)
    return out


def _coordinates(fields, R_structure: str) -> list[tuple[str, tuple]]:
    coords = []
    for name, x in fields.items():
        if name == "R" and R_structure == "isotropic":
            idx = [()]  # the whole of R = r I
        elif name == "R" and R_structure == "diagonal":
            idx = [(i, i) for i in range(len(x))]
        elif name in SYMMETRIC:
            idx = [(i, j) for i in range(len(x)) for j in range(i + 1)]
        else:
            idx = list(np.ndindex(x.shape))
        coords += [(name, ix) for ix in idx]
    return coords


def _moved(fields, coord, h) -> dict[str, np.ndarray]:
    name, ix = coord
    x = fields[name].copy()
    if ix == ():
        x += h * np.eye(len(x))
    else:
        x[ix] += h
        if name in SYMMETRIC and ix[0] != ix[1]:
            x[ix[::-1]] += h
    return {**fields, name: x}


def _transitions(fields, steps, cache: dict) -> list:
    """(A, Sigma) of each step: Van Loan's exp([[-F, Q], [0, F^T]] h), once per (F, Q, h)."""
    if "F" not in fields:
        return [(fields["A"], fields["Sigma"])] * len(steps)
    F, Q = fields["F"], fields["Q"]
    d = len(F)
    key = (F.tobytes(), Q.tobytes())
    if key not in cache:
        by_step = {}
        for h in np.unique(steps):
            E = scipy.linalg.expm(np.block([[-F, Q], [np.zeros((d, d)), F.T]]) * h)
            A = E[d:, d:].T
            by_step[h] = (A, A @ E[:d, d:])
        cache[key] = [by_step[h] for h in steps]
    return cache[key]


def _law(fields, steps, cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of y_1..y_K, all observed, the steps (K - 1,) between them."""
    K = len(steps) + 1
    transitions = _transitions(fields, steps, {} if cache is None else cache)
    means, rows = [fields["mu1"]], [[fields["P1"]]]  # rows[k][j] = Cov(x_k, x_j), j <= k
    for k, (A, Sigma) in enumerate(transitions):
        row = [A @ c for c in rows[k]]
        row.append(A @ rows[k][k] @ A.T + Sigma)
        rows.append(row)
        means.append(A @ means[-1])
    X = np.block([[rows[k][j] if j <= k else rows[j][k].T for j in range(K)] for k in range(K)])
    H = np.kron(np.eye(K), fields["H"])
    mean = (np.stack(means) @ fields["H"].T + fields["u"]).ravel()
    return mean, H @ X @ H.T + np.kron(np.eye(K), fields["R"])


def _information(fields, coords, steps) -> np.ndarray:
    """Fisher information of the law of the stretch in `coords`, scaled to unit diagonal."""
    dm, dS, cache = [], [], {}
    for coord in coords:
        name, ix = coord
        x = fields[name]
        scale = np.abs(x).max()
        h = STEP * max(abs(x[ix]) if ix != () else scale, scale if scale > 0 else 1.0)
        (m1, S1), (m0, S0) = (_law(_moved(fields, coord, s), steps, cache) for s in (h, -h))
        dm.append((m1 - m0) / (2 * h))
        dS.append((S1 - S0) / (2 * h))
    factor = scipy.linalg.cho_factor(_law(fields, steps, cache)[1])
    Jm = np.stack(dm, axis=1)
    M = np.stack([scipy.linalg.cho_solve(factor, s) for s in dS])  # S^-1 dS_a
    info = Jm.T @ scipy.linalg.cho_solve(factor, Jm)
    # + tr(S^-1 dS_a S^-1 dS_b) / 2
    info += 0.5 * M.reshape(len(M), -1) @ np.swapaxes(M, 1, 2).reshape(len(M), -1).T
    scale = np.sqrt(np.clip(np.diag(info), 0.0, None))
    scale[scale == 0] = 1.0
    return info / np.outer(scale, scale)


def unidentified(params, fixed, R_structure: str, steps) -> tuple[str, tuple, int] | None:
    """None when the free fields of `params` (those not in `fixed`, where "L" names Q) are
    identified, else `(direction, extra, left)`: the largest coordinates of a direction the law
    of y does not see, fields whose holding (besides `fixed`) removes such directions, and the
    number of directions left then (0: holding `extra` identifies the rest).

    `steps`: the steps between the first observation times (SDEParams; unused otherwise).
    """
    fields = _fields(params)
    fixed = {"Q" if f == "L" else f for f in fixed}
    judged = fixed - {"P1"}
    d, p = len(fields["mu1"]), len(fields["H"])
    K = max(2, min(len(steps) + 1, 2 * d + STEPS, VALUES // p))
    steps = np.asarray(steps, dtype=float)[: K - 1]
    point = _generic(fields, fixed, R_structure, np.random.default_rng(0))
    coords = [c for c in _coordinates(point, R_structure) if c[0] not in judged]
    if len(coords) > MAX_COORDINATES:
        return None
    try:
        info = _information(point, coords, steps)
    except (np.linalg.LinAlgError, ValueError):
        return None  # a law that cannot be evaluated here: EM and its finish will say more
    if not np.all(np.isfinite(info)):
        return None

    def flat(held):
        keep = [i for i, (name, _) in enumerate(coords) if name not in held]
        if not keep:
            return 0, keep, None
        w, V = np.linalg.eigh(info[np.ix_(keep, keep)])
        return int(np.sum(w < RTOL)), keep, V

    nullity, keep, V = flat(judged)
    if nullity == 0:
        return None
    top = np.argsort(-np.abs(V[:, 0]))[:4]
    direction = ", ".join(
        f"{coords[keep[i]][0]}[{','.join(map(str, coords[keep[i]][1]))}] ({V[i, 0]:+.2f})"
        for i in top
    )
    extra, held = [], set(judged)
    for name in CANDIDATES:
        if nullity and name in fields and name not in fixed:
            trial = flat(held | {name})[0]
            if trial < nullity:
                extra.append(name)
                held.add(name)
                nullity = trial
    return direction, tuple(extra), nullity


def check_identified(params, fixed, R_structure: str, steps) -> None:
    """Raise a ValueError naming the unidentified direction and what to do (see
    `unidentified`)."""
    problem = unidentified(params, fixed, R_structure, steps)
    if problem is None:
        return
    direction, extra, left = problem
    held = tuple(sorted(fixed))
    structure = (
        "give the model structure (`structure=`, or a NumPyro model such as the zoo's; an "
        "oscillator seen through its position needs its drift in companion form, say)"
    )
    hold = f"hold more fields at their start, e.g. fixed={held + extra!r}"
    if extra and not left:
        to_fit = f"{hold} (these identify the rest)"
    else:
        to_fit = f"{hold}, and {structure}" if extra else structure
    through_P1 = (
        ", or changes it only through the held initial covariance P1 (one observation's worth, "
        "however long the series)"
        if "P1" in held
        else ""
    )
    raise ValueError(
        f"the free parameters are not identified with fixed={held!r} (the default): moving them "
        f"along {direction} leaves the likelihood of any data unchanged{through_P1}. EM would "
        f"have no unique answer and no standard errors. To fit: {to_fit}; or pass `fixed` "
        "explicitly to run EM regardless."
    )
