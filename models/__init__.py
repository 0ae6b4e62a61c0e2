"""The model zoo: NumPyro model files for LTI-SDE state-space models.

Each file defines `model(times, y=None)` (priors on named parameters, ending with
`numpyro.sample("y", LTISDE(...), obs=y)`), `TRUE_PARAMS` (defaults for simulation), `to_sde`
(named parameters -> `SDEParams`) and a docstring whose first line is its summary and which says
what the data identify. The structured ones also have `start_from_data(times, y)`, EM's
start in the data's own units (`docs/em.md`); CARMA also has `more_starts_from_data`, starts in
other basins that EM runs from too. A model driven by known inputs (`driven_ou`) takes them as
`model(times, y=None, *, inputs)` `(T, m)`, names them in `INPUT_NAMES` (the command line's
`--inputs` is then required) and gives `example_inputs(times)`, the input that simulations use.
A model file of your own needs only `model` to be
fitted or sampled; simulating it (`sdessm simulate`, `sdessm demo`) needs `TRUE_PARAMS` and
`to_sde` too. Load one by name or from a file:

    >>> from sdessm.models import load, available
    >>> sorted(available())  # doctest: +NORMALIZE_WHITESPACE
    ['carma', 'damped_oscillator', 'driven_ou', 'local_level', 'multivariate_ou', 'ou',
     'trend_seasonal', 'unconstrained']
    >>> load("ou").TRUE_PARAMS["theta"]
    0.5
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

_REQUIRED = ("model",)


def available() -> dict[str, str]:
    """Name -> one-line summary of every model shipped with sdessm."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            doc = importlib.import_module(f"{__name__}.{info.name}").__doc__ or ""
            out[info.name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def load(name_or_path: str | Path) -> ModuleType:
    """A zoo model by name (`"damped_oscillator"`) or a model file of your own (`"my_model.py"`).

    Raises:
        ValueError: an unknown name (the message lists the zoo), a missing file, a file that
            fails to import (the message names the file and the error), or a module without
            `model`.
    """
    text = str(name_or_path)
    if text.endswith(".py") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist.")
        spec = importlib.util.spec_from_file_location(f"sdessm_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        # registered, so that the model function's module (its `start_from_data`) is found
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code: say which file and what went wrong
            del sys.modules[spec.name]
            raise ValueError(
                f"model file {path} failed to load: {type(err).__name__}: {err}"
            ) from err
    else:
        names = available()
        if text not in names:
            raise ValueError(f"unknown model {text!r}; the zoo has {sorted(names)}.")
        module = importlib.import_module(f"{__name__}.{text}")
    missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"model {text!r} does not define {missing}.")
    return module
