"""Checkpoints of an EM run: the iterate and its history, written atomically and resumed exactly.

A checkpoint is a NumPy `.npz` file holding the current and previous iterates (the leaves of the
parameter pytree), the log-likelihood and objective histories, the next iteration number, how
the run stopped (if it did), and a fingerprint of the fit: the data, the time grid, the path
and settings, and the starting values. EM is deterministic, so a run resumed from a checkpoint
takes the same steps as one that was never interrupted. The file is replaced in one rename
(`sdessm.io.atomic_path`), so a run killed at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .io import atomic_path

FORMAT = 1


def fingerprint(state, **settings) -> str:
    """A hash of the starting `state` (a pytree of arrays) and the fit's data and settings.

    `settings` values may be arrays (hashed by dtype, shape and bytes), None, or anything with a
    stable `repr` (strings, numbers, sorted tuples).
    """
    h = hashlib.sha256()
    h.update(str(jax.tree.structure(state)).encode())
    for leaf in jax.tree.leaves(state):
        _update(h, leaf)
    for key in sorted(settings):
        h.update(key.encode())
        value = settings[key]
        if value is None or isinstance(value, str | int | float | bool | tuple | frozenset):
            h.update(repr(sorted(value) if isinstance(value, frozenset) else value).encode())
        else:
            _update(h, value)
    return h.hexdigest()


def _update(h, array) -> None:
    a = np.ascontiguousarray(np.asarray(array))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def save(path, state, previous, lls, objectives, next_iter: int, key: str, stopped=None):
    """Write the checkpoint atomically.

    Args:
        path (str | os.PathLike): the checkpoint file.
        state (PyTree): the iterate to continue from (or, once stopped, to return).
        previous (PyTree): the iterate before it (returned if the next step lowers the objective).
        lls (Sequence[float]): log-likelihoods of the iterates so far.
        objectives (Sequence[float]): the objective (log-likelihood + log-prior) of each.
        next_iter (int): the iteration number at which to continue.
        key (str): the `fingerprint` of the fit.
        stopped (dict | None): `{"reason": ..., "converged": ...}` once the run has ended.
    """
    arrays = {f"state_{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(state))}
    arrays |= {f"previous_{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(previous))}
    meta = {
        "format": FORMAT,
        "fingerprint": key,
        "next_iter": int(next_iter),
        "stopped": stopped,
    }
    arrays["lls"] = np.asarray(lls, dtype=float)
    arrays["objectives"] = np.asarray(objectives, dtype=float)
    arrays["meta"] = np.asarray(json.dumps(meta))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load(path, template, key: str) -> dict | None:
    """The saved run (`state`, `previous`, `lls`, `objectives`, `next_iter`, `stopped`), or None
    when `path` does not exist yet.

    Raises:
        ValueError: `path` is not an sdessm EM checkpoint, or was written by a different fit.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            files = {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise ValueError(
            f"`checkpoint` {path} is not an sdessm EM checkpoint ({err}); remove it or choose "
            "another path."
        ) from None
    if meta["fingerprint"] != key:
        raise ValueError(
            f"`checkpoint` {path} was written by a different fit (other data, time grid, start, "
            "model or settings); remove it to start afresh, or choose another path."
        )
    leaves, treedef = jax.tree.flatten(template)

    def rebuild(prefix):
        saved = [files[f"{prefix}_{i}"] for i in range(len(leaves))]
        for s, t in zip(saved, leaves, strict=True):
            if s.shape != np.shape(t):
                raise ValueError(
                    f"`checkpoint` {path} holds arrays of other shapes than this fit's; remove it "
                    "or choose another path."
                )
        return jax.tree.unflatten(treedef, [jnp.asarray(s) for s in saved])

    return {
        "state": rebuild("state"),
        "previous": rebuild("previous"),
        "lls": files["lls"].tolist(),
        "objectives": files["objectives"].tolist(),
        "next_iter": meta["next_iter"],
        "stopped": meta["stopped"],
    }
