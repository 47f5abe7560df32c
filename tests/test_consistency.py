"""Consistency training (readout=consistency): the pseudo-label loss on hand-made cases, the
views it compares, and a fine-tune that never reads the unlabelled examples' labels."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from headstart import api
from headstart.objectives.base import Objective
from headstart.objectives.consistency import Consistency, cutout, noised_tokens
from headstart.readouts.context import Finetuning


class Identity(nn.Module):
    """A 'classifier' whose logits are its input: the test writes the predictions down."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


class NoLoss(Objective):
    name = "none"

    def make_batch(self, raw, generator):
        return raw

    def loss(self, model, batch):
        return torch.zeros(()), {}


def test_only_confident_weak_predictions_teach_the_strong_view():
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.3, 0.0, 0.0]])  # 96% sure of class 0; 42% sure: below 0.9
    strong = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    objective = Consistency(NoLoss(), lambda raw, g: {"input": weak}, lambda raw, g: {"input": strong}, 0.9, 2.0)
    batch = objective.make_batch({"labelled": {}, "unlabelled": None}, torch.Generator())
    loss, extra = objective.loss(Identity(), batch)
    expected = 2.0 * F.cross_entropy(strong[:1], torch.tensor([0])).item() / 2  # one of two counts, mean over both
    assert loss.item() == pytest.approx(expected) and extra["confident"].item() == 0.5
    objective.threshold = 0.99
    assert objective.loss(Identity(), batch)[0].item() == 0.0  # nobody confident enough: no signal


def test_strong_text_views_mask_or_replace_real_tokens_only():
    ids = torch.arange(1, 13).view(2, 6)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(noised_tokens(ids, mask, generator, 0.0, mask_id=99, vocab=50), ids)
    noised = noised_tokens(ids, mask, generator, 1.0, mask_id=99, vocab=50)
    assert torch.equal(noised[:, 0], ids[:, 0]) and torch.equal(noised[~mask], ids[~mask])
    changed = noised[mask][1:]
    assert ((changed == 99) | (changed < 50)).all() and (noised == 99).any()


def test_cutout_greys_one_square_per_image():
    images = torch.zeros(3, 1, 8, 8)
    out = cutout(images, torch.Generator().manual_seed(1), fraction=0.5)
    assert ((out == 0.5).sum(dim=(1, 2, 3)) == 16).all()


def test_consistency_fine_tunes_and_logs_its_unlabelled_loss(tiny_encoder, tmp_path, write_task):
    train, dev = write_task(tmp_path / "train.jsonl", 200, 0), write_task(tmp_path / "dev.jsonl", 60, 1)
    settings = [f"task.train={train}", f"task.eval={dev}", "task.max_len=16", f"init={tiny_encoder}", "budget=40",
                "train.steps=40", "train.eval_every=20", "train.precision=fp32", "optim.lr=3e-3",
                "readout=consistency", "consistency_threshold=0.6", f"run.out_dir={tmp_path}"]  # fmt: skip
    result = api.finetune("sst2", settings, quiet=True)
    assert result.steps == 40 and 0.0 <= result.metrics["accuracy"] <= 1.0
    records = (result.run_dir / "metrics.jsonl").read_text()
    assert "confident" in records and "unlabelled_loss" in records


@pytest.mark.parametrize(
    "readout",
    [
        ["readout=consistency", "consistency_threshold=0.6"],
        ["readout=distill", "distill_steps=20"],
        ["readout=propagate"],
    ],
    ids=["consistency", "distill", "propagate"],
)
def test_readouts_of_the_unlabelled_pool_never_read_its_labels(
    readout, tiny_encoder, tmp_path, write_task, monkeypatch
):
    """The same cell with the pool's labels replaced by nonsense ends with the same scores."""
    train, dev = write_task(tmp_path / "train.jsonl", 200, 0), write_task(tmp_path / "dev.jsonl", 60, 1)
    settings = [f"task.train={train}", f"task.eval={dev}", "task.max_len=16", f"init={tiny_encoder}", "budget=40",
                "train.steps=20", "train.eval_every=10", "train.precision=fp32", "optim.lr=3e-3",
                "unlabelled=80", f"run.out_dir={tmp_path}", *readout]  # fmt: skip
    honest = api.finetune("sst2", [*settings, "run.name=honest"], quiet=True)
    original = Finetuning.unlabelled_set

    def scrambled(self):
        pool = original(self)
        return dataclasses.replace(pool, labels=np.random.default_rng(0).permutation(pool.labels) * 0 - 7)

    monkeypatch.setattr(Finetuning, "unlabelled_set", scrambled)
    blind = api.finetune("sst2", [*settings, "run.name=blind"], quiet=True)
    assert blind.metrics == honest.metrics and math.isclose(blind.best_val, honest.best_val)
