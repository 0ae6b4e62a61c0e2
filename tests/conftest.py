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
