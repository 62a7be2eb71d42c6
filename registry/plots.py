"""Evaluation and explainability figures (matplotlib, Agg; no mlflow here).

Every function returns a ``matplotlib.figure.Figure`` (or an HTML string) built without
pyplot, so nothing touches a global figure registry or a display; the tracking code decides
where the PNGs go (``save_figure`` then ``mlflow.log_artifact``). Degenerate inputs (empty,
one class, constant attention) give a figure that says why the plot is empty instead of
raising, so an evaluation never fails on a plot.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0), **kw: Any):
    """A pyplot-free Figure with an Agg canvas and its axes array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _empty(ax: Axes, reason: str) -> None:
    """Say on the axes why there is nothing to draw."""
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _binary(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1).astype(int)
    p = np.asarray(prob, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return 0 < y.sum() < y.size


def roc_curve_figure(
    y_true: Any, prob: Any, threshold: float | None = None, title: str = "ROC curve"
) -> Figure:
    """ROC curve with its AUROC and, if given, the operating point at ``threshold``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, p = _binary(y_true, prob)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.set_title(title)
    if not _both_classes(y):
        _empty(ax, "ROC undefined: needs both classes")
        return fig
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"AUROC {roc_auc_score(y, p):.3f} (n={y.size})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    if threshold is not None:
        pred = p >= threshold
        ax.plot(
            [pred[y == 0].mean()], [pred[y == 1].mean()], "o", label=f"threshold {threshold:.3g}"
        )
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return fig


def pr_curve_figure(y_true: Any, prob: Any, title: str = "Precision-recall curve") -> Figure:
    """Precision-recall curve with average precision and the prevalence (chance) line."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = _binary(y_true, prob)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.set_title(title)
    if not _both_classes(y):
        _empty(ax, "PR curve undefined: needs both classes")
        return fig
    precision, recall, _ = precision_recall_curve(y, p)
    ax.step(recall, precision, where="post", label=f"AP {average_precision_score(y, p):.3f}")
    ax.axhline(y.mean(), linestyle="--", color="grey", label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return fig


def calibration_figure(
    y_true: Any, prob: Any, bins: int = 10, title: str = "Calibration"
) -> Figure:
    """Reliability diagram (observed vs predicted per bin, with ECE) over a histogram of prob."""
    from fusion.metrics import calibration_table

    y, p = _binary(y_true, prob)
    fig, axes = _figure(2, 1, size=(5.0, 6.0), sharex=True, height_ratios=[3, 1])
    top, bottom = axes[0, 0], axes[1, 0]
    top.set_title(title)
    if y.size == 0:
        _empty(top, "no predictions to calibrate")
        _empty(bottom, "")
        return fig
    table = calibration_table(y, p, bins)
    filled = table[table["count"] > 0]
    ece = float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    top.plot(filled["mean_prob"], filled["frac_pos"], "o-", label=f"model (ECE {ece:.3f})")
    top.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    width = 1.0 / bins
    bottom.bar(table["bin_low"], table["count"], width=width, align="edge", edgecolor="black")
    bottom.set(xlabel="predicted probability", ylabel="count")
    return fig


def confusion_matrix_figure(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion matrix",
) -> Figure:
    """Confusion matrix twice: counts, and normalised by true class (rows sum to 1)."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(y_true).reshape(-1).astype(int)
    pred = np.asarray(y_pred).reshape(-1).astype(int)
    k = len(class_names) if class_names else int(max(y.max(initial=1), pred.max(initial=1))) + 1
    names = [str(c) for c in class_names] if class_names else [str(i) for i in range(k)]
    fig, axes = _figure(1, 2, size=(10.0, 4.5))
    fig.suptitle(title)
    if y.size == 0:
        for ax in axes[0]:
            _empty(ax, "no predictions")
        return fig
    counts = confusion_matrix(y, pred, labels=list(range(k)))
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    for ax, matrix, fmt, label in (
        (axes[0, 0], counts, "d", "counts"),
        (axes[0, 1], normalised, ".2f", "fraction of true class"),
    ):
        image = ax.imshow(matrix, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        high = matrix.max() / 2 if matrix.max() > 0 else 1
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                format(v, fmt),
                ha="center",
                va="center",
                color="white" if v > high else "black",
            )
        ax.set(
            title=label,
            xlabel="predicted",
            ylabel="true",
            xticks=range(k),
            yticks=range(k),
            xticklabels=names,
            yticklabels=names,
        )
    return fig


def _curve_group(name: str) -> tuple[str, str]:
    """'train_loss' -> ('train', 'loss'); 'val/auroc' -> ('val', 'auroc'); 'lr' -> ('', 'lr')."""
    for prefix, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        for sep in ("_", "/", "."):
            if name.startswith(prefix + sep):
                return split, name[len(prefix) + 1 :]
    return "", name


# Panels of the training-curves grid, in order: title and the quantities drawn on it (for a
# quantity with alternatives, e.g. binary 'auroc' vs multiclass 'auroc_macro', the first
# one in the history wins). Calibration draws Brier and ECE together: both lower-is-better
# on about the same scale.
CURVE_PANELS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("loss", (("loss",),)),
    ("AUROC", (("auroc", "auroc_macro", "auroc_micro"),)),
    ("AUPRC", (("auprc", "auprc_macro", "auprc_micro"),)),
    ("calibration", (("brier",), ("ece",))),
)
# Quantities that fill the grid up to MAX_CURVE_PANELS when the ones above are missing
# (other tasks); bookkeeping series are never drawn.
SECONDARY_CURVES = ("balanced_accuracy", "f1_macro", "accuracy", "f1")
NOT_CURVES = frozenset({"lr", "epoch_seconds", "seconds", "n", "prevalence", "threshold"})
MAX_CURVE_PANELS = 4
SPLIT_STYLE = {"train": ("tab:blue", "-"), "val": ("tab:orange", "--"), "test": ("tab:green", ":")}
QUANTITY_COLOURS = ("tab:purple", "tab:red", "tab:brown")


def _curve_panels(series: Mapping[tuple[str, str], np.ndarray]) -> list[tuple[str, list[str]]]:
    """The panels to draw: (title, quantities) for what the history actually holds."""
    have = {q for _, q in series}
    panels: list[tuple[str, list[str]]] = []
    for title, slots in CURVE_PANELS:
        chosen = [next(q for q in alts if q in have) for alts in slots if have & set(alts)]
        if chosen:
            panels.append((title, chosen))
    used = {q for _, qs in panels for q in qs}
    others = [q for q in SECONDARY_CURVES if q in have] + sorted(
        have - used - set(SECONDARY_CURVES) - NOT_CURVES
    )
    # a quantity already shown under another name (auroc_micro next to auroc_macro) is skipped
    others = [
        q
        for q in others
        if q not in used and not any(q in alts for _, sl in CURVE_PANELS for alts in sl)
    ]
    for q in others[: max(0, MAX_CURVE_PANELS - len(panels))]:
        panels.append((q, [q]))
    return panels


def training_curves_figure(
    history: Mapping[str, Sequence[float]], best_epoch: int | None = None
) -> Figure:
    """A small grid of the curves that matter, x = epoch: loss, AUROC, AUPRC, calibration.

    Train and validation curves of one quantity share an axis (train solid, validation
    dashed); a panel with only one split says so in its title. Learning rate, timings and
    sample descriptors are left out; other quantities fill the grid (at most
    ``MAX_CURVE_PANELS`` panels) only when the main ones were not logged. ``best_epoch``
    (0-based index into the history) marks the epoch whose weights were kept.
    """
    from matplotlib.ticker import MaxNLocator

    series: dict[tuple[str, str], np.ndarray] = {}
    for name, values in history.items():
        arr = np.asarray(values, dtype=float).reshape(-1)
        if arr.size and np.isfinite(arr).any():
            series[_curve_group(name)] = arr
    panels = _curve_panels(series)
    n = max(len(panels), 1)
    ncols = 2 if n == 4 else n  # n <= MAX_CURVE_PANELS: 1-3 in a row, 4 as 2 x 2
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols, size=(4.8 * ncols, 3.4 * nrows))
    flat = list(axes.reshape(-1))
    for ax in flat[n:]:
        ax.remove()
    if not panels:
        _empty(flat[0], "no training history")
        return fig
    for ax, (title, quantities) in zip(flat, panels, strict=False):
        splits: set[str] = set()
        markers = ("o", "s", "^")
        for i, q in enumerate(quantities):
            for split in ("train", "val", "test", ""):
                values = series.get((split, q))
                if values is None:
                    continue
                splits.add(split or "unlabelled")
                colour, style = SPLIT_STYLE.get(split, ("tab:gray", "-"))
                if len(quantities) > 1:  # colour tells the quantity, line style the split
                    colour = QUANTITY_COLOURS[i % len(QUANTITY_COLOURS)]
                label = " ".join(p for p in ((split or None), q) if p)
                ax.plot(
                    np.arange(1, values.size + 1),
                    values,
                    color=colour,
                    linestyle=style,
                    marker=markers[i % len(markers)] if values.size < 30 else None,
                    markersize=4,
                    label=label,
                )
        if best_epoch is not None:
            ax.axvline(
                best_epoch + 1, color="grey", linewidth=0.8, linestyle=":", label="weights kept"
            )
        only = {"train": "train", "val": "validation"}.get(next(iter(splits)), "")
        if len(splits) != 1:
            only = ""
        ax.set(title=f"{title} ({only} only)" if only else title, xlabel="epoch")
        if title == "calibration":
            ax.set_ylabel("lower is better")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    return fig


def _first_column(table: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in table.columns), None)


def comparison_figure(table: pd.DataFrame, metric: str, label: str | None = None) -> Figure:
    """Bar chart of ``metric`` across runs with bootstrap CI error bars where available.

    Reads ``metric`` or ``metrics.<metric>`` (``mlflow.search_runs`` columns) and the matching
    ``<metric>_ci_low``/``_ci_high``; bars are named by ``label`` or the run name/id.
    """
    fig, axes = _figure(size=(max(5.0, 0.8 * len(table) + 2), 4.0))
    ax = axes[0, 0]
    ax.set_title(metric)
    column = _first_column(table, [metric, f"metrics.{metric}"])
    if column is None or table.empty:
        _empty(ax, f"no runs with metric {metric!r}")
        return fig
    rows = table[table[column].notna()]
    if rows.empty:
        _empty(ax, f"no runs with metric {metric!r}")
        return fig
    name_col = label or _first_column(rows, ["tags.mlflow.runName", "run_name", "run_id"])
    names = [str(v) for v in (rows[name_col] if name_col else rows.index)]
    values = rows[column].to_numpy(float)
    low_col = _first_column(rows, [f"{metric}_ci_low", f"metrics.{metric}_ci_low"])
    high_col = _first_column(rows, [f"{metric}_ci_high", f"metrics.{metric}_ci_high"])
    yerr = None
    if low_col and high_col:
        low, high = rows[low_col].to_numpy(float), rows[high_col].to_numpy(float)
        # a missing CI draws no bar rather than a wrong one
        yerr = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0).clip(min=0)
    x = np.arange(len(values))
    ax.bar(x, values, yerr=yerr, capsize=4, color="tab:blue")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(metric)
    return fig


def _upsample(attention: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of an attention grid onto the volume grid."""
    from scipy.ndimage import zoom

    factors = [t / s for t, s in zip(shape, attention.shape, strict=True)]
    up = zoom(attention, factors, order=1, mode="nearest", grid_mode=True)
    return up[tuple(slice(0, s) for s in shape)]


# Display order of an axial view: slices from inferior to superior, rows from anterior (top)
# to posterior, columns from patient right to left (radiological convention: the patient's
# right on the viewer's left).
AXIAL_DISPLAY = ("S", "P", "L")


def _to_axial(
    arrays: Sequence[np.ndarray], affine: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Reorient (permute/flip) arrays given in ``affine``'s voxel grid into axial display order.

    Returns the arrays, the superior coordinate (mm) of each displayed slice's centre, and the
    largest angle (degrees) between a voxel axis and the world axis it was matched to: an
    oblique source is shown along its nearest axes.
    """
    from nibabel.affines import obliquity
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    aff = np.asarray(affine, dtype=float)
    shape = arrays[0].shape
    transform = ornt_transform(io_orientation(aff), axcodes2ornt(AXIAL_DISPLAY))
    out = [apply_orientation(a, transform) for a in arrays]
    new_aff = aff @ inv_ornt_aff(transform, shape)
    centre = (np.array(out[0].shape[1:], dtype=float) - 1) / 2
    sup = np.array([(new_aff @ np.array([k, *centre, 1.0]))[2] for k in range(out[0].shape[0])])
    return out, sup, float(np.degrees(obliquity(aff)).max())


def attention_overlay_figure(
    volume: Any, attention: Any, slices: int = 3, affine: Any = None
) -> Figure:
    """Slices of ``volume`` with the attention grid (d, h, w) upsampled on top.

    With ``affine`` (voxel -> RAS+ mm, as the tensor cache stores it with each volume) the
    slices are true axial slices shown in radiological convention (anterior up, patient
    right on the left) and titled with their superior coordinate, whatever the source's
    orientation; an oblique source is noted in the title. Without it, slices are taken along
    the first array axis as given. Shows the ``slices`` slices that receive the most
    attention (in order), each with the heat map (normalised to [0, 1]) at 40% opacity.
    """
    vol = np.asarray(volume, dtype=float)
    att = np.asarray(attention, dtype=float)
    if vol.ndim != 3 or vol.size == 0:
        fig, axes = _figure()
        _empty(axes[0, 0], "no volume to show (expects a non-empty 3D array)")
        return fig
    if att.ndim != 3 or att.size == 0 or not np.isfinite(att).all():
        att = np.zeros((1, 1, 1))  # nothing usable: show the volume without a heat map
    up = _upsample(att, vol.shape)
    span = up.max() - up.min()
    up = (up - up.min()) / span if span > 0 else np.zeros_like(up)
    sup: np.ndarray | None = None
    oblique = 0.0
    usable = affine is not None and np.isfinite(np.asarray(affine, dtype=float)).all()
    if usable and abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])) > 1e-12:
        (vol, up), sup, oblique = _to_axial([vol, up], np.asarray(affine, dtype=float))
    k = max(1, min(int(slices), vol.shape[0]))
    chosen = np.sort(np.argsort(-up.sum((1, 2)), kind="stable")[:k])
    fig, axes = _figure(1, k, size=(3.2 * k, 3.4))
    lo, hi = np.percentile(vol, [1, 99])
    for ax, z in zip(axes[0], chosen, strict=True):
        ax.imshow(vol[z], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.imshow(up[z], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"slice {z}" if sup is None else f"axial S{sup[z]:+.0f} mm, slice {z}")
        ax.axis("off")
    if sup is not None:
        note = f"; source oblique by {oblique:.0f} deg" if oblique >= 1.0 else ""
        fig.suptitle(f"radiological view: anterior up, patient right on the left{note}", fontsize=8)
    return fig


def note_tokens_html(tokens: Sequence[str], weights: Sequence[float]) -> str:
    """Tokens as HTML spans shaded by weight (red = positive, blue = negative).

    The caller guarantees the tokens are de-identified. WordPiece continuations (``##ing``)
    are joined to the previous token; weights are scaled by the largest magnitude.
    """
    if len(tokens) != len(weights):
        raise ValueError(f"{len(tokens)} tokens but {len(weights)} weights")
    w = np.nan_to_num(np.asarray(weights, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    scale = np.abs(w).max() if w.size and np.abs(w).max() > 0 else 1.0
    parts: list[str] = []
    for token, weight in zip(tokens, w / scale, strict=True):
        text = str(token)
        glue = text.startswith("##")
        text = html.escape(text[2:] if glue else text)
        colour = "255,0,0" if weight >= 0 else "0,0,255"
        span = (
            f'<span style="background-color: rgba({colour},{abs(weight):.3f})" '
            f'title="{weight:+.3f}">{text}</span>'
        )
        parts.append(span if glue or not parts else " " + span)
    return '<div class="clinfuse-note-attention">' + "".join(parts) + "</div>"


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` as PNG via a temporary file and rename (readers never see half a file).

    The figure is cleared afterwards to free its memory; returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        fig.clear()
    return target
