"""Checkpoints of EM and NUTS runs, written atomically and resumed exactly.

A checkpoint is a NumPy `.npz` file holding the current and previous iterates (the leaves of the
parameter pytree), the log-likelihood and objective histories, the next iteration number, how
the run stopped (if it did), and a fingerprint of the fit: the data, the time grid, the path
and settings, and the starting values. EM is deterministic, so a run resumed from a checkpoint
takes the same steps as one that was never interrupted. The file is replaced in one rename
(`sdessm.outputs.atomic_path`), so a run killed at any moment leaves the previous checkpoint whole.

A NUTS checkpoint (`save_sampler`, `load_sampler`) holds the sampler's state after warm-up or
after the last block of draws (positions, adapted step size and mass matrix, random keys), the
draws so far and a fingerprint of the run; NumPyro continues a chain from such a state
(`MCMC.post_warmup_state`), so a resumed or extended run draws what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .outputs import atomic_path

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


def save(path, state, previous, lls, objectives, next_iter: int, key: str, stopped=None,
         step_bound: float | None = None):  # fmt: skip
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
        step_bound (float | None): SQUAREM's step bound to continue with (accelerated EM).
    """
    arrays = {f"state_{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(state))}
    arrays |= {f"previous_{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(previous))}
    arrays["lls"] = np.asarray(lls, dtype=float)
    arrays["objectives"] = np.asarray(objectives, dtype=float)
    meta = {"next_iter": int(next_iter), "stopped": stopped, "step_bound": step_bound}
    _write(path, arrays, meta, key, EM_KIND)


def load(path, template, key: str) -> dict | None:
    """The saved run (`state`, `previous`, `lls`, `objectives`, `next_iter`, `stopped`,
    `step_bound`), or None when `path` does not exist yet.

    Raises:
        ValueError: `path` is not an sdessm EM checkpoint, or was written by a different fit.
    """
    read = _read(path, key, EM_KIND)
    if read is None:
        return None
    meta, files = read
    return {
        "state": _rebuild(path, files, "state", template),
        "previous": _rebuild(path, files, "previous", template),
        "lls": files["lls"].tolist(),
        "objectives": files["objectives"].tolist(),
        "next_iter": meta["next_iter"],
        "stopped": meta["stopped"],
        "step_bound": meta.get("step_bound"),
    }


def save_sampler(path, state, draws: dict | None, num_draws: int, key: str) -> None:
    """Write a NUTS checkpoint atomically.

    Args:
        path (str | os.PathLike): the checkpoint file.
        state (PyTree): NumPyro's sampler state to continue from (`MCMC.last_state`); random keys
            are stored as their key data.
        draws (dict | None): what `MCMC` collected so far, a nested dict of arrays with leading
            (chain, draw) axes, or None before the first draw.
        num_draws (int): draws per chain so far.
        key (str): the `fingerprint` of the run.
    """
    leaves = jax.tree.leaves(state)
    typed = [_is_key(v) for v in leaves]
    arrays = {
        f"state_{i}": np.asarray(jax.random.key_data(v) if t else v)
        for i, (v, t) in enumerate(zip(leaves, typed, strict=True))
    }
    paths = []
    if draws is not None:
        flat = jax.tree_util.tree_flatten_with_path(draws)[0]
        for i, (keypath, value) in enumerate(flat):
            paths.append([k.key for k in keypath])  # nested dicts: DictKey entries only
            arrays[f"draws_{i}"] = np.asarray(value)
    meta = {"num_draws": int(num_draws), "typed_keys": typed, "draw_paths": paths}
    _write(path, arrays, meta, key, NUTS_KIND)


def load_sampler(path, template, key: str) -> dict | None:
    """The saved NUTS run (`state`, `draws`, `num_draws`), or None when `path` does not exist.

    `template` is a sampler state of the same kernel and model (one chain is enough: only its
    tree structure and which leaves are random keys are used).

    Raises:
        ValueError: `path` is not an sdessm NUTS checkpoint, or was written by another run.
    """
    read = _read(path, key, NUTS_KIND)
    if read is None:
        return None
    meta, files = read
    leaves, treedef = jax.tree.flatten(template)
    if len(leaves) != len(meta["typed_keys"]):
        raise ValueError(_OTHER_SHAPES.format(path=path))
    state = [
        jax.random.wrap_key_data(files[f"state_{i}"]) if typed else jnp.asarray(files[f"state_{i}"])
        for i, typed in enumerate(meta["typed_keys"])
    ]
    draws = None
    if meta["draw_paths"]:
        draws = {}
        for i, keypath in enumerate(meta["draw_paths"]):
            node = draws
            for k in keypath[:-1]:
                node = node.setdefault(k, {})
            node[keypath[-1]] = files[f"draws_{i}"]
    return {
        "state": jax.tree.unflatten(treedef, state),
        "draws": draws,
        "num_draws": meta["num_draws"],
    }


EM_KIND, NUTS_KIND = "EM", "NUTS"
_OTHER_SHAPES = (
    "`checkpoint` {path} holds arrays of other shapes than this run's; remove it or choose "
    "another path."
)


def _is_key(value) -> bool:
    return jax.dtypes.issubdtype(getattr(value, "dtype", None), jax.dtypes.prng_key)


def _write(path, arrays: dict, meta: dict, key: str, kind: str) -> None:
    meta = {"format": FORMAT, "kind": kind, "fingerprint": key} | meta
    arrays = arrays | {"meta": np.asarray(json.dumps(meta))}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _read(path, key: str, kind: str):
    """(meta, arrays) of the checkpoint at `path`, None if there is none; errors as documented."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            if meta.get("kind", EM_KIND) != kind:
                raise ValueError(f"it is a {meta.get('kind')} checkpoint")
            files = {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise ValueError(
            f"`checkpoint` {path} is not an sdessm {kind} checkpoint ({err}); remove it or choose "
            "another path."
        ) from None
    if meta["fingerprint"] != key:
        raise ValueError(
            f"`checkpoint` {path} was written by a different run (other data, time grid, start, "
            "model or settings); remove it to start afresh, or choose another path."
        )
    return meta, files


def _rebuild(path, files: dict, prefix: str, template):
    leaves, treedef = jax.tree.flatten(template)
    saved = [files.get(f"{prefix}_{i}") for i in range(len(leaves))]
    for s, t in zip(saved, leaves, strict=True):
        if s is None or s.shape != np.shape(t):
            raise ValueError(_OTHER_SHAPES.format(path=path))
    return jax.tree.unflatten(treedef, [jnp.asarray(s) for s in saved])


class RunFile:
    """A run kept in the file `path`: resumed if it holds this run (`key`), written every
    `every_n` iterations and when the loop stops. `bound` is SQUAREM's step bound (a one-item
    list the accelerated step updates), None for plain EM."""

    def __init__(self, path, key, every_n: int, bound: list | None = None):
        self.path, self.key, self.every_n, self.bound = path, key, every_n, bound
        self.before = None  # the bound before the latest step

    def resume(self, state, num_iters: int):
        saved = load(self.path, state, self.key)
        if saved is None:
            return state, state, [], [], 0, None
        state, previous = saved["state"], saved["previous"]
        lls, objectives = saved["lls"], saved["objectives"]
        start, stopped = saved["next_iter"], saved["stopped"]
        if self.bound is not None and saved["step_bound"] is not None:
            self.bound[0] = saved["step_bound"]
        if stopped is not None and stopped["reason"] == "reached num_iters":
            if num_iters > start:  # continue: iteration `start` is computed again
                lls, objectives, stopped = lls[:-1], objectives[:-1], None
        return state, previous, lls, objectives, start, stopped

    def mark(self):
        """Called before each step: the bound to save if that step is computed again."""
        self.before = None if self.bound is None else self.bound[0]

    def every(self, state, previous, lls, objectives, next_iter: int):
        if next_iter % self.every_n == 0:
            bound = None if self.bound is None else self.bound[0]
            save(
                self.path, state, previous, lls, objectives, next_iter, key=self.key,
                step_bound=bound,
            )  # fmt: skip

    def stop(self, state, previous, lls, objectives, next_iter, reason: str, converged: bool):
        stopped = {"reason": reason, "converged": converged}
        # at num_iters the last step is computed again by a continued run: the bound before it
        bound = self.before if reason == "reached num_iters" else None
        save(
            self.path, state, previous, lls, objectives, next_iter, key=self.key, stopped=stopped,
            step_bound=bound,
        )  # fmt: skip
