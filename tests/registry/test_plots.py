"""Every plot writes a real PNG, on tiny inputs and on degenerate ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from registry import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 40)
P = RNG.random(40)
RUNS = pd.DataFrame(
    {
        "tags.mlflow.runName": ["late", "cross_attention", "ct-only"],
        "metrics.auroc": [0.71, 0.78, np.nan],
        "metrics.auroc_ci_low": [0.65, np.nan, np.nan],
        "metrics.auroc_ci_high": [0.77, np.nan, np.nan],
    }
)

CASES = {
    "roc": lambda: plots.roc_curve_figure(Y, P, threshold=0.5),
    "roc_one_class": lambda: plots.roc_curve_figure(np.ones(5), RNG.random(5)),
    "roc_empty": lambda: plots.roc_curve_figure([], []),
    "pr": lambda: plots.pr_curve_figure(Y, P),
    "pr_one_class": lambda: plots.pr_curve_figure(np.zeros(3), [0.1, 0.2, 0.3]),
    "calibration": lambda: plots.calibration_figure(Y, P),
    "calibration_one_class": lambda: plots.calibration_figure(np.ones(4), [0.9, 0.8, 1.0, 0.7]),
    "calibration_empty": lambda: plots.calibration_figure([], []),
    "confusion": lambda: plots.confusion_matrix_figure(Y, (P > 0.5).astype(int)),
    "confusion_named": lambda: plots.confusion_matrix_figure(
        [0, 2, 1], [0, 1, 1], class_names=["a", "b", "c"]
    ),
    "confusion_empty": lambda: plots.confusion_matrix_figure([], []),
    "training": lambda: plots.training_curves_figure(
        {"train_loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "val_auroc": [0.6, 0.7, 0.75]}
    ),
    "training_empty": lambda: plots.training_curves_figure({"train_loss": []}),
    "comparison": lambda: plots.comparison_figure(RUNS, "auroc"),
    "comparison_plain_columns": lambda: plots.comparison_figure(
        pd.DataFrame({"run_name": ["a"], "f1": [0.5]}), "f1"
    ),
    "comparison_missing_metric": lambda: plots.comparison_figure(RUNS, "brier"),
    "comparison_empty": lambda: plots.comparison_figure(pd.DataFrame(), "auroc"),
    "attention": lambda: plots.attention_overlay_figure(
        RNG.random((12, 24, 20)), RNG.random((3, 4, 5))
    ),
    "attention_constant": lambda: plots.attention_overlay_figure(
        np.ones((2, 8, 8)), np.ones((1, 1, 1))
    ),
    "attention_empty": lambda: plots.attention_overlay_figure(
        np.zeros((0, 4, 4)), np.zeros((1, 1, 1))
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_figure_writes_png(case: str, tmp_path) -> None:
    path = plots.save_figure(CASES[case](), tmp_path / "sub" / f"{case}.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 2000  # a rendered figure, not an empty file
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 200 and height >= 200
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_attention_overlay_picks_the_attended_slices(tmp_path) -> None:
    attention = np.zeros((4, 2, 2))
    attention[3] = 1.0  # only the deepest quarter is attended
    fig = plots.attention_overlay_figure(RNG.random((16, 8, 8)), attention, slices=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles and all(int(t.split()[-1]) >= 12 for t in titles)


def test_note_tokens_html_escapes_and_shades() -> None:
    out = plots.note_tokens_html(["fever", "<b>", "cough", "##ing"], [0.2, 1.0, -0.5, float("nan")])
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "rgba(255,0,0,1.000)" in out and "rgba(0,0,255,0.500)" in out
    assert ">cough</span><span" in out and ">ing</span>" in out  # word pieces joined
    assert plots.note_tokens_html([], []).startswith("<div")
    with pytest.raises(ValueError, match="weights"):
        plots.note_tokens_html(["a"], [])


# What fusion.train.fit logs per epoch today (16 quantities); the first test adds train_auroc,
# val_loss and train_brier as a loop that evaluates both splits would.
EPOCHS = 12
FIT_KEYS = [
    "train_loss", "lr", "epoch_seconds", "val_n", "val_prevalence", "val_threshold",
    "val_auroc", "val_auprc", "val_accuracy", "val_balanced_accuracy", "val_f1",
    "val_sensitivity", "val_specificity", "val_ppv", "val_npv", "val_brier", "val_ece",
]  # fmt: skip


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_training_curves_grid_of_what_matters(tmp_path) -> None:
    history = {
        k: list(RNG.random(EPOCHS)) for k in [*FIT_KEYS, "train_auroc", "val_loss", "train_brier"]
    }
    fig = plots.training_curves_figure(history, best_epoch=6)
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert list(axes) == ["loss", "AUROC", "AUPRC (validation only)", "calibration"]
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes] == [(2, 2)] * 4
    # train and validation of one quantity on the same axes, told apart by line style
    loss = [line for line in axes["loss"].get_lines() if line.get_label() != "weights kept"]
    assert [line.get_label() for line in loss] == ["train loss", "val loss"]
    assert [line.get_linestyle() for line in loss] == ["-", "--"]
    assert _lines(axes["AUROC"])[:2] == ["train auroc", "val auroc"]
    assert _lines(axes["calibration"])[:3] == ["train brier", "val brier", "val ece"]
    assert "weights kept" in _lines(axes["loss"])
    width, height = _png_size(plots.save_figure(fig, tmp_path / "curves.png"))
    assert 600 <= width <= 2000 and 400 <= height <= 1200, (width, height)


def test_training_curves_today_and_other_tasks(tmp_path) -> None:
    # Today's loop: only train loss per epoch for loss, only validation for the rest.
    fig = plots.training_curves_figure({k: list(RNG.random(EPOCHS)) for k in FIT_KEYS})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss (train only)", "AUROC (validation only)", "AUPRC (validation only)",
                      "calibration (validation only)"]  # fmt: skip
    width, _ = _png_size(plots.save_figure(fig, tmp_path / "today.png"))
    assert width <= 2000
    # Multiclass names its AUROC auroc_macro; a missing AUPRC frees a panel for accuracy.
    multi = {"train_loss": [1, 0.5], "val_auroc_macro": [0.6, 0.7], "val_auroc_micro": [0.6, 0.7],
             "val_balanced_accuracy": [0.4, 0.5], "val_brier": [0.3, 0.2],
             "lr": [1e-3, 1e-4]}  # fmt: skip
    titles = [ax.get_title() for ax in plots.training_curves_figure(multi).axes]
    val_only = ["AUROC", "calibration", "balanced_accuracy"]
    assert titles == ["loss (train only)", *(f"{t} (validation only)" for t in val_only)]
    # An all-NaN series is not drawn.
    only_loss = {"train_loss": [0.9, 0.5], "val_auroc": [float("nan")] * 2}
    assert [ax.get_title() for ax in plots.training_curves_figure(only_loss).axes] == [
        "loss (train only)"
    ]


def test_attention_overlay_with_affine_shows_radiological_axial_slices() -> None:
    # A RAS volume (x = R, y = A, z = S) with a marker at the right-anterior corner of slice 9
    # and the attention on it: shown as axial slice 9, anterior at the top, patient right on
    # the viewer's left (top-left corner), titled with its superior coordinate.
    vol = np.zeros((8, 6, 12))
    vol[7, 5, 9] = 5.0  # largest R and A
    att = np.zeros((8, 6, 12))
    att[7, 5, 9] = 1.0
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-7.0, -5.0, 10.0]
    fig = plots.attention_overlay_figure(vol, att, slices=1, affine=affine)
    (ax,) = fig.axes
    assert ax.get_title() == "axial S+37 mm, slice 9"  # 10 + 9 * 3
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (6, 8)  # rows: A -> P, columns: R -> L
    assert np.unravel_index(np.argmax(shown), shown.shape) == (0, 0)


def test_attention_overlay_follows_a_permuted_affine() -> None:
    # Array axis 0 runs inferior -> superior (a permuted grid): the axial slices are along it.
    vol = np.zeros((10, 4, 5))
    vol[2, 1, 1] = 1.0
    att = np.zeros((10, 4, 5))
    att[2] = 1.0
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [2.0, 0, 0, -4.0], [0, 0, 0, 1]])
    fig = plots.attention_overlay_figure(vol, att, slices=1, affine=affine)
    assert fig.axes[0].get_title().startswith("axial S+0 mm, slice 2")
    oblique = affine.copy()
    oblique[:3, :3] = oblique[:3, :3] @ np.array(
        [[1, 0, 0], [0, np.cos(0.35), -np.sin(0.35)], [0, np.sin(0.35), np.cos(0.35)]]
    )
    fig = plots.attention_overlay_figure(vol, att, slices=1, affine=oblique)
    assert "oblique by 20 deg" in fig.get_suptitle()
