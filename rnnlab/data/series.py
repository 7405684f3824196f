"""Real time series that statsmodels ships (public domain; see SOURCES.md): yearly sunspot numbers
and weekly Mauna Loa CO2."""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources

import torch


def _rows(name: str) -> list[list[str]]:
    raw = gzip.decompress(resources.files(__package__).joinpath(name).read_bytes()).decode()
    return list(csv.reader(io.StringIO(raw)))[1:]


def load_sunspots() -> torch.Tensor:
    """Yearly mean sunspot activity, 1700-2008: (309,) float64."""
    return torch.tensor([float(v) for _, v in _rows("sunspots.csv.gz")], dtype=torch.float64)


def fill_gaps(values: list[float | None]) -> torch.Tensor:
    """Linear interpolation over missing values (ends take the nearest known value)."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        raise ValueError("fill_gaps: values must hold at least one known value; got none")
    out = torch.empty(len(values), dtype=torch.float64)
    for i, v in enumerate(values):
        out[i] = float("nan") if v is None else v
    x = torch.tensor(known, dtype=torch.float64)
    y = out[known]
    t = torch.arange(len(values), dtype=torch.float64)
    right = torch.searchsorted(x, t).clamp(1, len(known) - 1)
    left = right - 1
    w = ((t - x[left]) / (x[right] - x[left]).clamp(min=1e-12)).clamp(0, 1) if len(known) > 1 else torch.zeros_like(t)
    filled = y[left] + w * (y[right] - y[left]) if len(known) > 1 else y[0].expand_as(t)
    return torch.where(torch.isnan(out), filled, out)


def load_co2() -> torch.Tensor:
    """Weekly atmospheric CO2 (ppm) at Mauna Loa, March 1958 - December 2001: (2284,) float64,
    the 59 missing weeks filled by linear interpolation."""
    return fill_gaps([float(v) if v else None for _, v in _rows("co2.csv.gz")])
