"""Draw a diagnosed run: one panel per series, each finding shaded on the panel it is about.

Panels, top to bottom: loss (training, and validation when logged; a log axis when the loss
spans more than a decade or the run blew up, so a blow-up does not flatten the rest), validation
accuracy (when logged), the global gradient norm (log axis), per-layer gradient norms (when
logged; per-layer findings are shaded here, not on the global panel), and the learning rate.
A legend names the colour of every finding kind; the title names the file.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .diagnose import KINDS, Finding
from .metrics import Run

GRADIENT_KINDS = ("exploding-gradients", "vanishing-gradients", "accumulating-gradients")
MAX_LAYERS = 8  # lines on the per-layer panel: the layers named by findings, then the largest


def _panel_of(f: Finding, has_layers: bool) -> str:
    if f.kind in GRADIENT_KINDS:
        per_layer = f.evidence.get("series") == "per-layer" or (f.kind == "vanishing-gradients" and "layers" in f.evidence)
        return "grad_norms" if per_layer and has_layers else "grad_norm"
    if f.kind == "broken-labels":
        return "val_accuracy"
    return "loss"


def _named_layers(findings: list[Finding]) -> list[str]:
    names: list[str] = []
    for f in findings:
        layers = f.evidence.get("layers")
        for n in layers if isinstance(layers, (list, dict)) else []:
            if n not in names:
                names.append(n)
    return names


def plot(run: Run, findings: list[Finding], path: str | os.PathLike, *, overwrite: bool = False, title: str | None = None) -> str:
    """Write a .png, .svg or .pdf of ``run`` with ``findings`` shaded (atomically; an existing file
    only with ``overwrite``); returns its path. ``title`` defaults to the log's file name."""
    from ..zoo.files import check_output_file, write_atomic
    from .diagnose import PLOT_SUFFIXES

    check_output_file(path, overwrite=overwrite, suffixes=PLOT_SUFFIXES, what="plot")
    import matplotlib.pyplot as plt

    fig = figure(run, findings, title=title)
    try:
        written = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100), overwrite=overwrite, suffixes=PLOT_SUFFIXES, what="plot")
    finally:
        plt.close(fig)
    return os.fspath(written)


def figure(run: Run, findings: list[Finding], title: str | None = None):
    """The matplotlib Figure (Agg backend) that ``plot`` saves; one axis per panel, in the order
    of the module docstring, each labelled with its panel's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    steps = np.array([r["step"] for r in run.train])
    loss = np.array([r["loss"] for r in run.train], dtype=float)
    finite = np.isfinite(loss)
    unit = getattr(run, "unit", "step")
    panels: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = []
    loss_lines = {"loss": (steps, np.where(finite, loss, np.nan))}
    vs, vv = run.eval_series("val_loss")
    if vs:
        loss_lines["val_loss"] = (np.array(vs), np.array(vv, dtype=float))
    panels.append(("loss", loss_lines))
    acc_steps, acc = run.eval_series("val_accuracy")
    if acc_steps:
        panels.append(("val_accuracy", {"val_accuracy": (np.array(acc_steps), np.array(acc, dtype=float))}))
    if any("grad_norm" in r for r in run.train):
        g = np.array([r.get("grad_norm", np.nan) for r in run.train], dtype=float)
        panels.append(("grad_norm", {"grad_norm": (steps, g)}))
    layer_names = sorted({k for r in run.train for k in r.get("grad_norms", {})})
    if layer_names:
        series = {n: (steps, np.array([r.get("grad_norms", {}).get(n, np.nan) for r in run.train], dtype=float)) for n in layer_names}
        named = [n for n in _named_layers(findings) if n in series]
        rest = sorted((n for n in series if n not in named), key=lambda n: -np.nanmedian(series[n][1]))
        panels.append(("grad_norms", {n: series[n] for n in (named + rest)[:MAX_LAYERS]}))
    if any("lr" in r for r in run.train):
        panels.append(("lr", {"lr": (steps, np.array([r.get("lr", np.nan) for r in run.train], dtype=float))}))

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels) + 1.0), sharex=True, squeeze=False)
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    colour_of = {kind: palette[KINDS.index(kind) % len(palette)] for kind in KINDS}
    blew_up = (not finite.all()) or any(f.kind in ("divergence", "early-instability", "non-finite") for f in findings)
    for ax, (name, lines) in zip(axes[:, 0], panels):
        for label, (x, y) in lines.items():
            style = "o-" if name != "grad_norms" and label.startswith("val_") else "-"
            ax.plot(x, y, style, ms=3, lw=1, label=label)
        values = np.concatenate([y[np.isfinite(y)] for _, y in lines.values()])
        positive = values[values > 0]
        if name in ("grad_norm", "grad_norms") and len(positive) == len(values) and len(values):
            ax.set_yscale("log")
        if name == "loss" and len(positive) == len(values) and len(values) and (blew_up or positive.max() / positive.min() > 30):
            ax.set_yscale("log")
        if name == "loss" and not finite.all():
            first_bad = steps[~finite][0]
            ax.axvline(first_bad, color="red", lw=1)
            ax.annotate(
                f"non-finite from {unit} {first_bad}",
                (first_bad, 0.95),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="red",
                ha="right",
                va="top",
            )
        for f in findings:
            if _panel_of(f, bool(layer_names)) == name:
                ax.axvspan(f.start_step - 0.5, f.end_step + 0.5, color=colour_of[f.kind], alpha=0.2, lw=0)
        ax.set_ylabel(name)
        ax.legend(loc="upper right", fontsize=7, ncol=2 if len(lines) > 4 else 1)
    axes[-1, 0].set_xlabel(unit)
    kinds = [k for k in KINDS if any(f.kind == k for f in findings)]
    if kinds:
        handles = [Patch(color=colour_of[k], alpha=0.35, label=f"{k} ({sum(f.kind == k for f in findings)})") for k in kinds]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, title="findings (shaded)", title_fontsize=8)
    name = title or os.path.basename(getattr(run, "path", "") or "") or "training run"
    summary = f"{len(findings)} finding(s)" if findings else "no findings"
    fig.suptitle(f"{name}: {summary}", fontsize=10)
    height = fig.get_size_inches()[1]
    bottom = (0.45 + 0.22 * math.ceil(len(kinds) / 4)) / height if kinds else 0.0
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.35 / height))
    return fig
