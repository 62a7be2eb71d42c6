"""Progress reporters: forced-on lines without a terminal, nothing by default or with --json."""

from __future__ import annotations

import io

import pytest

from workflows import progress


def test_epoch_callback_shows_epochs_and_the_validation_metric() -> None:
    out = io.StringIO()
    with progress.use(progress.LineReporter(out)):
        on_epoch = progress.epoch_callback(max_epochs=3, monitor="auroc")
        for e in range(2):
            on_epoch("concat", e, {"train_loss": 0.7 - e / 10, "val_auroc": 0.6 + e / 10})
        on_epoch("unimodal_ct", 0, {"train_loss": 0.5, "val_auroc": float("nan")})
    lines = out.getvalue().splitlines()
    assert lines == [
        "train concat: 1/3  epoch 1/3 loss 0.700 val_auroc 0.600",
        "train concat: 2/3  epoch 2/3 loss 0.600 val_auroc 0.700",
        "train concat: done",
        "train unimodal_ct: 1/3  epoch 1/3 loss 0.500 val_auroc n/a",
    ]
    assert isinstance(progress.reporter(), progress.Reporter)  # restored after the block


def test_counter_reports_done_of_total() -> None:
    out = io.StringIO()
    with progress.use(progress.LineReporter(out)):
        report = progress.counter("score:x", "score", "patients")
        report(64, 100)
        report(100, 100)
    assert out.getvalue().splitlines() == [
        "score: 64/100  64/100 patients", "score: 100/100  100/100 patients"
    ]


@pytest.mark.parametrize(
    ("flag", "env", "as_json", "kind"),
    [
        (None, None, False, progress.Reporter),  # pytest's stderr is not a terminal: off
        (True, None, False, progress.LineReporter),  # forced on: lines
        (None, "1", False, progress.LineReporter),
        (None, "1", True, progress.LineReporter),  # the env var wins over --json's default
        (None, None, True, progress.Reporter),
        (False, "1", False, progress.Reporter),  # --no-progress wins
    ],
)
def test_make_reporter_picks_by_flag_env_and_terminal(flag, env, as_json, kind, monkeypatch):
    if env is None:
        monkeypatch.delenv(progress.ENV, raising=False)
    else:
        monkeypatch.setenv(progress.ENV, env)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert type(progress.make_reporter(flag, as_json)) is kind
