"""``train.threads`` caps torch's intra-op threads for the training loop (small models train
far faster on one thread of a busy 2-core machine); unset, the count is left alone."""

from __future__ import annotations

import pytest
import torch

from fusion.train import TrainConfig
from tests.model_recipes import load_recipe


def test_threads_defaults_to_torchs_choice_and_rejects_zero() -> None:
    assert TrainConfig().threads is None
    with pytest.raises(ValueError):
        TrainConfig(threads=0)


def test_digits_recipe_trains_on_one_thread() -> None:
    assert load_recipe("digits").train.threads == 1


def test_fit_sets_the_thread_count_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusion import train as train_mod

    class Stop(Exception):
        pass

    def stop(*_a: object, **_k: object) -> None:
        raise Stop

    monkeypatch.setattr(train_mod, "get_task", stop)  # end fit right after the thread cap
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(Stop):
            train_mod.fit(torch.nn.Linear(1, 1), [], [], TrainConfig(threads=1), "binary",
                          lambda p: {})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
