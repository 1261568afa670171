"""Robust statistics of training curves, shared by diagnose's detectors (docs/diagnose.md).

Every relative measure divides by a level that is never below a floor: near a loss of zero a
0.01-nat wiggle is 100% of the level but says nothing about the run, so levels below the floor
(diagnose uses a tenth of the loss at initialisation) are measured against the floor instead.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def window(n: int) -> int:
    """Trailing-window length: a tenth of the run, between 10 and 50 steps."""
    return int(min(50, max(10, n // 10)))


def past_windows(values: np.ndarray, w: int, include_current: bool) -> np.ndarray:
    """Row i holds the w values before index i (or ending at i), NaN-padded at the start."""
    padded = np.concatenate([np.full(w, np.nan), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, w)
    return windows[1:] if include_current else windows[:-1]


def nanmedian_rows(windows: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows at the start are expected
        return np.nanmedian(windows, axis=1)


def rolling_median(values: np.ndarray, w: int) -> np.ndarray:
    """Median of the last w values up to and including each index."""
    return nanmedian_rows(past_windows(np.asarray(values, dtype=float), w, include_current=True))


def centred_median3(values: np.ndarray) -> np.ndarray:
    """Median of each value and its two neighbours (the ends repeat): one-step outliers removed,
    no lag."""
    padded = np.pad(np.asarray(values, dtype=float), 1, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 3), axis=1)


def relative_noise(values: np.ndarray, floor: float = 0.0) -> float:
    """Robust std of the noise relative to the level (never below ``floor``), from second
    differences.

    Second differences cancel a locally linear trend, and divided by the level (a trailing
    5-median) exponential decay or growth leaves a near-constant that subtracting the median
    removes, so neither a steep start nor a blow-up passes for noise: 1.4826 MAD(second
    difference / level) / sqrt(6) estimates the std of independent noise. NaN with fewer than 5
    finite values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 5:
        return math.nan
    level = np.abs(rolling_median(values, 5)[1:-1])
    relative = np.diff(values, n=2) / np.maximum(level, max(floor, 1e-12))
    return 1.4826 * float(np.median(np.abs(relative - np.median(relative)))) / math.sqrt(6)


def robust_z(values: np.ndarray, w: int, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Robust z-score of each value against the w values before it, and the window's level.

    The level is the median of the last five values of the window; the noise scale is the
    median absolute deviation of the window's second differences (1.4826 MAD / sqrt 6, a
    Gaussian-consistent estimate of the noise std that a smooth, even a curved, trend does not
    inflate), and never less than the whole series' relative noise times the level (at least
    ``floor``): a window of a few dozen values can look quiet by chance, and a scale estimated
    from a handful of differences must not turn ordinary noise into spikes. This is Iglewicz and
    Hoaglin's modified z-score made robust to the trend of a training curve. NaN where there are
    fewer than max(10, w/2) past values."""
    values = np.asarray(values, dtype=float)
    windows = past_windows(np.where(np.isfinite(values), values, np.nan), w, include_current=False)
    enough = np.isfinite(windows).sum(axis=1) >= max(10, w // 2)
    level = nanmedian_rows(windows[:, -5:])
    curvature = np.diff(windows, n=2, axis=1)
    mad = nanmedian_rows(np.abs(curvature - nanmedian_rows(curvature)[:, None]))
    scale = 1.4826 * np.nan_to_num(mad) / math.sqrt(6)
    floored = np.maximum(np.abs(np.nan_to_num(level)), floor)
    run_noise = np.nan_to_num(relative_noise(values, floor)) * floored
    scale = np.maximum.reduce(
        [
            scale,
            run_noise,
            1.4826e-3 * floored,  # flat windows
            np.full_like(scale, 1e-12),
        ]
    )
    ok = enough & np.isfinite(values) & np.isfinite(level)
    z = np.where(ok, (values - level) / scale, np.nan)
    return z, np.where(ok, level, np.nan)


def groups(indices: list[int], gap: int) -> list[list[int]]:
    """Split sorted indices into runs whose members are at most ``gap`` apart."""
    out: list[list[int]] = []
    for i in indices:
        if out and i - out[-1][-1] <= gap:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def spans(mask) -> list[tuple[int, int]]:
    """(first, last) index of every run of consecutive True values."""
    return [(g[0], g[-1]) for g in groups(np.flatnonzero(mask).tolist(), 1)]


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (no ties expected in real-valued series); NaN for < 3 points."""
    if len(x) < 3:
        return math.nan
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denominator) if denominator else math.nan
