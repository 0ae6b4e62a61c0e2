"""Real time series shipped with sdessm, with their source and licence.

| name | what | rows | licence |
|---|---|---|---|
| `sunspots` | yearly mean sunspot numbers, 1700-2008 (NOAA NGDC) | 309 | public domain |
| `nile` | yearly flow of the Nile at Aswan, 1871-1970 (Cobb 1978) | 100 | public domain |
| `greensboro_july` | hourly air temperature and sunshine, July 1981 (NSRDB) | 744 | BSD-3 |

`load(name)` returns a pandas DataFrame whose first column is the time; `path(name)` is the CSV
file itself, for the command line (`sdessm fit "$(python -c ...)"`, or `sdessm data NAME --out
FILE` to copy it). Each data set's source, licence and any changes are in `info(name)` and in
`data/README.md` inside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: name -> (file, time column, one-line summary, source, licence)
_DATASETS = {
    "sunspots": (
        "sunspots.csv",
        "year",
        "yearly mean sunspot numbers 1700-2008 (309 rows; columns year, sunspots)",
        "National Geophysical Data Center (NOAA), Solar Data Services, yearly sunspot numbers "
        "(http://www.ngdc.noaa.gov/stp/solar/solarda3.html), as redistributed with statsmodels "
        "(statsmodels.datasets.sunspots); columns renamed, values unchanged",
        "public domain (a work of the United States government)",
    ),
    "nile": (
        "nile.csv",
        "year",
        "yearly flow of the Nile at Aswan 1871-1970, in 10^8 m^3 (100 rows; columns year, volume)",
        "Cobb, G. W. (1978), The problem of the Nile: conditional solution to a changepoint "
        "problem, Biometrika 65(2), 243-251; the series of Durbin and Koopman's state-space "
        "textbook, as redistributed with statsmodels (statsmodels.datasets.nile); unchanged",
        'public domain (statsmodels: "This is public domain.")',
    ),
    "greensboro_july": (
        "greensboro_july.csv",
        "hour",
        "hourly air temperature (deg C) and global horizontal irradiance (W/m^2) at Greensboro, "
        "NC, July 1981 (744 rows; columns hour, temperature, ghi)",
        "National Solar Radiation Database, TMY3 file 723170TYA (Wilcox and Marion 2008, Users "
        "Manual for TMY3 Data Sets, NREL/TP-581-43156), the month of July (measured in 1981), as "
        "redistributed with pvlib python (pvlib/data/723170TYA.CSV); three columns kept, hours "
        "counted from 1981-07-01 00:00 local standard time",
        "BSD 3-Clause (pvlib python; copyright and conditions in data/README.md)",
    ),
}


def available() -> dict[str, str]:
    """Data set name -> one-line summary."""
    return {name: entry[2] for name, entry in _DATASETS.items()}


def _entry(name: str):
    if name not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {sorted(_DATASETS)}.")
    return _DATASETS[name]


def path(name: str) -> Path:
    """The CSV file of data set `name` inside the installed package."""
    file = _entry(name)[0]
    return Path(str(resources.files("sdessm") / "data" / file))


def info(name: str) -> dict[str, str]:
    """`{"summary", "time_column", "source", "licence", "path"}` of data set `name`."""
    _, time_column, summary, source, licence = _entry(name)
    return {
        "summary": summary,
        "time_column": time_column,
        "source": source,
        "licence": licence,
        "path": str(path(name)),
    }


def load(name: str):
    """Data set `name` as a pandas DataFrame: the time column first, then the values.

    Examples:
        >>> from sdessm import datasets
        >>> df = datasets.load("sunspots")
        >>> df.shape, list(df.columns), int(df["year"].iloc[0]), float(df["sunspots"].max())
        ((309, 2), ['year', 'sunspots'], 1700, 190.2)
    """
    import pandas as pd

    return pd.read_csv(path(name))
