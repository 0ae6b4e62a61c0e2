import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module. Every XLA CPU executable keeps
    memory mappings; a test worker that compiles for the whole suite would pass the kernel's
    limit on mappings per process (vm.max_map_count, 65530 by default) and crash in a later
    compilation. Modules rarely share programs, so little is compiled twice."""
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True, scope="session")
def _compilation_cache(tmp_path_factory):
    """A persistent compilation cache for the session, one directory per test worker. NumPyro
    compiles the same sampler program again for each chain it runs in sequence and for each
    `run` call (a NUTS checkpoint runs one per block); from the cache a repeat costs its tracing
    only; so does a program compiled again after `_free_compiled_programs`. Programs that
    compile in under 0.1 s are not stored. The command lines that tests run in subprocesses
    use the same folder (not the user's `~/.cache/sdessm/jax`)."""
    import os

    from jax.experimental.compilation_cache import compilation_cache

    folder = str(tmp_path_factory.mktemp("jax-cache"))
    os.environ["SDESSM_COMPILATION_CACHE"] = folder
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
