r"""JAX's persistent compilation cache, kept in the user's cache folder.

Most of the time of a fit on a modest series is XLA compiling its programs: the EM iteration,
the gradient and the Hessian of the exact log-likelihood (several seconds each on a CPU). A
compiled program depends only on the shapes of the data and on the model, not on the values, so
a later fit of data of the same shape (the next run of the command line, the next Python
session) can load it from disk instead.

The command line turns the cache on by default; Python code turns it on with
`enable_compilation_cache()`. The folder is

1. the `SDESSM_COMPILATION_CACHE` environment variable when it names a folder, or
2. `$XDG_CACHE_HOME/sdessm/jax` (`~/.cache/sdessm/jax` when `XDG_CACHE_HOME` is unset).

`SDESSM_COMPILATION_CACHE=off` (or `0`, `false`, `no`, empty) turns it off, as does the
command line's `--no-compilation-cache`. A cache folder that the user already gave JAX
(`jax_compilation_cache_dir`, e.g. through `JAX_COMPILATION_CACHE_DIR`) is used as it is. The
folder holds at most `MAX_BYTES` (least recently used entries go first) and may be deleted at
any time. JAX trusts what it loads from it: keep it private (it is created readable by its
owner only).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

#: The environment variable that moves (a folder) or turns off (`off`) the cache.
ENVIRONMENT = "SDESSM_COMPILATION_CACHE"
#: Values of `ENVIRONMENT` that turn the cache off.
OFF = ("off", "0", "false", "no", "")
#: Most bytes kept in the folder; the least recently used entries are evicted beyond it.
MAX_BYTES = 2**30
#: Programs that compile faster than this are not written (reading them back costs as much),
#: unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise.
MIN_COMPILE_SECONDS = 0.2


def default_folder() -> Path | None:
    """The cache folder the environment asks for: `ENVIRONMENT`, else the user's cache folder;
    None when `ENVIRONMENT` turns it off."""
    value = os.environ.get(ENVIRONMENT)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdessm" / "jax"


def enable_compilation_cache(folder: str | os.PathLike | None = None) -> Path | None:
    """Keep JAX's compiled programs in `folder` (default: `default_folder()`) so that later
    processes load them instead of compiling again; returns the folder in use, or None when the
    cache is off.

    A folder already given to JAX (`jax_compilation_cache_dir`) is kept and returned.

    Raises:
        ValueError: `folder` exists and is not a folder.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = default_folder() if folder is None else Path(folder).expanduser()
    if folder is None:
        return None
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the compilation cache `{folder}` exists and is not a folder.")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's, if set
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    try:  # needs `filelock` (a dependency); older JAX versions have no size limit at all
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except AttributeError:
        pass
    compilation_cache.reset_cache()  # JAX decided at its first compilation: decide again
    return folder
