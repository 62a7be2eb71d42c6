"""Zero-shot classification (fusion/zero_shot.py): the recipe's prompts, the label parsing
that feeds evaluation only, nearest-prompt accuracy with a bootstrap CI, and one-line
errors for recipes that cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fusion.tasks import cohort_task, get_task
from fusion.zero_shot import classify, zero_shot_config, zero_shot_labels, zero_shot_scores
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError

ZS = {"template": "a handwritten {}", "classes": {"0": "zero", "1": "one", "2": "two"}}


def _cohort(**over: object) -> CohortConfig:
    base = {"task": "retrieval", "labels": ["label"], "zero_shot": ZS,
            "modalities": {"image": {"spec": {"size": [8, 8]}}, "text": {"type": "note"}}}
    return CohortConfig.model_validate(base | over)


def test_retrieval_is_the_task_and_contrastive_its_alias() -> None:
    assert get_task("retrieval") is not get_task("contrastive")  # one instance per name
    assert type(get_task("retrieval")) is type(get_task("contrastive"))
    assert type(get_task("retrieval")).name == "retrieval"


def test_prompts_read_well_in_yaml_and_int_keys_become_label_values() -> None:
    recipe = Path(__file__).resolve().parents[2] / "configs" / "digits_retrieval.yaml"
    cfg = CohortConfig.model_validate(yaml.safe_load(recipe.read_text())["cohort"])
    cohort_task(cfg)
    zs = zero_shot_config(cfg)
    assert zs is not None and zs.prompts()[7] == ["a handwritten seven"]
    assert list(zs.class_words()) == [str(d) for d in range(10)]
    yaml_ints = _cohort(zero_shot={"template": ["a {}", "the digit {}"],
                                   "classes": {0: "zero", 1: "one"}})
    zs2 = zero_shot_config(yaml_ints)
    assert zs2 is not None and zs2.prompts() == [["a zero", "the digit zero"],
                                                 ["a one", "the digit one"]]


def test_labels_are_parsed_for_evaluation_only() -> None:
    cfg = _cohort()
    task = cohort_task(cfg)
    assert task.label_columns(cfg) == []  # training reads none
    assert zero_shot_labels({"label": "2"}, cfg) == [2.0]
    assert np.isnan(zero_shot_labels({"label": "9"}, cfg)[0])  # names no class: NaN, kept
    assert zero_shot_labels({"label": ""}, cfg) is None
    assert task.parse_labels({"label": "1"}, cfg) == [1.0]
    plain = _cohort(zero_shot=None)
    assert task.parse_labels({"label": "1"}, plain) is None


@pytest.mark.parametrize(("over", "message"), [
    ({"zero_shot": {"template": "no slot", "classes": ["a", "b"]}}, "exactly one {}"),
    ({"zero_shot": {"template": "a {}", "classes": ["a"]}}, "two or more distinct classes"),
    ({"zero_shot": ZS | {"text": "image"}}, "not a text modality"),
    ({"zero_shot": ZS | {"prompt": "x"}}, "Extra inputs"),
    ({"labels": ["a", "b"]}, "exactly one label column"),
    ({"modalities": {"image": {"spec": {"size": [8, 8]}}}}, "needs one text modality"),
    ({"task": "binary"}, "cohort.zero_shot is for the retrieval task"),
])
def test_bad_zero_shot_recipes_fail_in_one_line(over: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        cohort_task(_cohort(**over))
    assert "\n" not in str(err.value)


def test_nearest_prompt_accuracy_with_a_bootstrap_ci() -> None:
    rng = np.random.default_rng(0)
    prompts = np.eye(3, 4)
    y = np.repeat([0, 1, 2], 40).astype(float)
    noisy = np.eye(3, 4)[y.astype(int)] + rng.normal(0, 0.6, (120, 4))
    image = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    text = np.full((120, 4), np.nan)  # the prompt tower itself is not classified
    emb = np.stack([image, text], 1)
    y[:5] = np.nan  # labels that name no class are left out
    present = {"image": np.ones(120, bool), "text": np.zeros(120, bool)}
    m = zero_shot_scores(emb, ["image", "text"], "text", prompts, y, present, 200, 0)
    acc = np.mean(classify(image[5:], prompts) == y[5:])
    assert m["zero_shot/image/accuracy"] == pytest.approx(acc) and acc > 0.6
    assert m["zero_shot/image/accuracy_ci_low"] < acc < m["zero_shot/image/accuracy_ci_high"]
    assert m["zero_shot/image/n"] == 115 and m["zero_shot/classes"] == 3
    assert not any(k.startswith("zero_shot/text") for k in m)
