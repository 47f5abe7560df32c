import json

import numpy as np
import pytest
import torch

from headstart import api
from headstart.config import TrainConfig
from headstart.data.labelled import read_labelled_jsonl, split_validation, stratified_budget
from headstart.errors import HeadstartError
from headstart.models.heads import pool
from headstart.objectives.classify import accuracy_and_macro_f1
from headstart.readouts.full import layer_scale, steps_for_epochs


def test_budgets_are_stratified_deterministic_and_checked():
    labels = np.array([0] * 80 + [1] * 20)
    a = stratified_budget(labels, 10, seed=3)
    assert len(a) == 10 and len(set(a)) == 10
    assert (labels[a] == 1).sum() == 2
    assert np.array_equal(a, stratified_budget(labels, 10, seed=3))
    assert not np.array_equal(a, stratified_budget(labels, 10, seed=4))
    assert (labels[stratified_budget(labels, 3, seed=0)] == 1).sum() >= 1  # every class when the budget allows
    assert len(stratified_budget(labels, 0, seed=0)) == 100
    with pytest.raises(HeadstartError, match="larger than the 100"):
        stratified_budget(labels, 101, seed=0)


def test_labels_outside_the_training_label_set_are_errors(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    data = read_labelled_jsonl(train)
    assert data.classes == ["neg", "pos"] and data.labels.tolist() == [1, 0]
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"text": "c", "label": "neutral"}\n')
    with pytest.raises(HeadstartError, match=r"outside the training set's 2 labels \["):
        read_labelled_jsonl(dev, classes=data.classes)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(HeadstartError, match="no records"):
        read_labelled_jsonl(empty)


def test_pooling_ignores_padding():
    hidden = torch.arange(12, dtype=torch.float).view(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    assert torch.equal(pool(hidden, mask, "mean"), hidden[0, :2].mean(0, keepdim=True))
    assert torch.equal(pool(hidden, mask, "last"), hidden[:, 1])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "max"), hidden[:, 1])


def test_validation_split_is_stratified_disjoint_and_capped():
    strata = np.array([0] * 80 + [1] * 20)
    chosen = np.arange(100)
    fit, held = split_validation(strata, chosen, 0.2, seed=3)
    assert len(held) == 20 and not set(fit) & set(held) and sorted([*fit, *held]) == list(range(100))
    assert (strata[held] == 1).sum() == 4  # the class shares are kept
    _, capped = split_validation(strata, chosen, 0.2, seed=3, most=5)
    assert len(capped) == 5 and set(strata[capped]) == {0, 1}
    with pytest.raises(HeadstartError, match="too small to hold out"):
        split_validation(strata, np.array([0, 85]), 0.2, seed=3)


def test_macro_f1_and_layer_scales():
    scores = accuracy_and_macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert scores["accuracy"] == 0.75
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    scale = layer_scale(depth=2, decay=0.5)
    assert scale("head.weight") == 1.0
    assert scale("backbone.blocks.1.mlp.up.weight") == 0.5
    assert scale("backbone.blocks.0.mlp.up.weight") == 0.25
    assert scale("backbone.embed.weight") == 0.125


def test_min_epochs_lengthens_large_budgets_only():
    short = TrainConfig(steps=300, batch_size=32, eval_every=25)
    assert steps_for_epochs(short, 1.0, 1600) == short  # 300 steps already pass over 1,600 examples 6 times
    assert steps_for_epochs(short, 0.0, 65_000) == short
    long = steps_for_epochs(short, 1.0, 65_000)
    assert long.steps == 2032 and long.eval_every == 170  # ⌈65000/32⌉, evaluations spaced by the same factor
    assert steps_for_epochs(TrainConfig(steps=10, batch_size=4, grad_accum=2, eval_every=0), 2.0, 100).steps == 25


def test_finetune_pretrained_and_scratch_learn_the_task(tiny_encoder, tmp_path, write_task):
    train, dev = write_task(tmp_path / "train.jsonl", 300, 0), write_task(tmp_path / "dev.jsonl", 100, 1)
    common = [
        f"task.train={train}", f"task.eval={dev}", "task.max_len=16", f"run.out_dir={tmp_path}", "budget=200",
        "train.steps=60", "train.eval_every=20", "train.precision=fp32", "optim.lr=3e-3",
    ]  # fmt: skip
    tuned = api.finetune("sst2", [*common, f"init={tiny_encoder}"], quiet=True)
    scratch = api.finetune("sst2", [*common, "init=scratch", f"architecture={tiny_encoder}"], quiet=True)
    for result in (tuned, scratch):
        assert result.metrics["accuracy"] > 0.8
        assert result.best_step in (20, 40, 60)
        saved = json.loads((result.run_dir / "result.json").read_text())
        assert saved["budget"] == 200 and saved["accuracy"] == result.metrics["accuracy"]
    probe = api.finetune("sst2", [*common, f"init={tiny_encoder}", "readout=logistic", "run.name=probe"], quiet=True)
    assert probe.steps == 0 and probe.metrics["accuracy"] > 0.8
    spread = api.finetune(
        "sst2", [*common, f"init={tiny_encoder}", "readout=propagate", "budget=20",
                 "run.name=propagate"], quiet=True,
    )  # fmt: skip
    assert spread.steps == 0 and spread.metrics["accuracy"] > 0.8  # 20 labels spread over the other 280 texts
    assert spread.flops > probe.flops  # it embeds the unlabelled texts too
    lpft = api.finetune("sst2", [*common, f"init={tiny_encoder}", "head_init=probe", "run.name=lpft"], quiet=True)
    assert lpft.metrics["accuracy"] > 0.8 and lpft.flops > tuned.flops  # the probe's forward passes are counted
    epochs = api.finetune("sst2", [*common, f"init={tiny_encoder}", "min_epochs=16", "run.name=epochs"], quiet=True)
    assert epochs.steps == 80  # 16 passes over the 160 examples left after validation, in batches of 32
    from safetensors.torch import load_file

    weights = load_file(str(next((probe.run_dir / "checkpoints").iterdir()) / "model.safetensors"))
    original = load_file(str(tiny_encoder / "model.safetensors"))
    assert torch.equal(weights["backbone.embed.weight"], original["embed.weight"])  # the backbone stayed frozen


def test_finetune_input_errors(tiny_shards, tmp_path, write_task):
    train = write_task(tmp_path / "train.jsonl", 20, 0)
    with pytest.raises(HeadstartError, match="needs a checkpoint"):
        api.finetune("sst2", [f"task.train={train}", f"task.eval={train}", "init=scratch"], quiet=True)
