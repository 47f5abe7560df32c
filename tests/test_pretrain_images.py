import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headstart import api
from headstart.config import VisionConfig
from headstart.errors import HeadstartError
from headstart.models.vision import build_vision
from headstart.readouts.frozen_features import frozen_scores, knn_accuracy, knn_votes
from headstart.workflows import pretrain_data as module
from tests.conftest import two_class_images

TINY = [
    "train.batch_size=16", "train.precision=fp32", "train.log_every=1", "schedule.warmup_steps=2", "optim.lr=3e-3",
    "vision.width=8", "vision.depth=1", "objective.projection_hidden=32", "objective.projection_dim=16",
]  # fmt: skip


def run(tmp_path, name, extra=(), resume=False):
    data = two_class_images(tmp_path / "images.npz")
    overrides = [*TINY, f"data.images={data}", f"data.eval_images={data}", f"run.out_dir={tmp_path}",
                 f"run.name={name}", "objective.name=simclr", *extra]  # fmt: skip
    return api.pretrain("gpt-tiny", overrides, resume=resume, quiet=True)


def test_simclr_run_evaluates_frozen_features_and_resumes_exactly(tmp_path, monkeypatch):
    settings = ["train.steps=6", "train.checkpoint_every=3", "train.eval_every=3"]
    straight = run(tmp_path, "straight", settings)
    assert {"knn_accuracy", "probe_accuracy"} <= set(straight.last_eval)
    compute = json.loads((straight.checkpoint / "compute.json").read_text())
    assert compute["tokens"] == 6 * 16 and compute["flops"] > 0  # an image counts as one "token"

    original = module.ExampleBatches.batch
    calls = {"n": 0}

    def crash_at_step_5(self, first, count):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return original(self, first, count)

    monkeypatch.setattr(module.ExampleBatches, "batch", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, "crashed", settings)
    monkeypatch.setattr(module.ExampleBatches, "batch", original)
    resumed = run(tmp_path, "crashed", settings, resume=True)
    a, b = (load_file(str(r.checkpoint / "model.safetensors")) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mae_trains_a_vit_and_refuses_a_resnet(tmp_path):
    vit = [
        "vision.kind=vit", "vision.patch=2", "vision.width=16", "vision.n_head=2", "objective.name=mae",
        "objective.decoder_width=16", "objective.decoder_depth=1", "train.steps=30", "train.eval_every=0",
    ]  # fmt: skip
    result = run(tmp_path, "mae", vit)
    losses = [
        json.loads(x)["loss"] for x in (tmp_path / "mae" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert losses[-1] < 0.9 * losses[0]
    assert "backbone.patch_embed.weight" in load_file(str(result.checkpoint / "model.safetensors"))
    with pytest.raises(HeadstartError, match=r"needs vision\.kind=vit"):
        run(tmp_path, "mae-resnet", ["objective.name=mae", "train.steps=2"])


def test_frozen_evaluation_leaves_batch_norm_and_mode_alone():
    torch.manual_seed(0)
    backbone = build_vision(VisionConfig(kind="resnet", channels=1, image_size=8, width=4, depth=1))
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8), np.arange(40) % 2
    scores = frozen_scores(backbone, images, labels, images, labels)
    assert backbone.training  # its mode is restored
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # running stats untouched
    assert 0.0 <= scores["knn_accuracy"] <= 1.0 and 0.0 <= scores["probe_accuracy"] <= 1.0


def test_knn_votes_by_similarity():
    fit = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_accuracy(fit, labels, test, torch.tensor([0, 1]), k=1) == 1.0
    assert knn_accuracy(fit, labels, test, torch.tensor([1, 0]), k=1) == 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluations run under the training's autocast
        under_bf16 = knn_votes(fit, labels, test, 2, k=3)
    assert under_bf16.dtype == torch.float32 and torch.equal(under_bf16, knn_votes(fit, labels, test, 2, k=3))


def test_simclr_with_gradcache_trains_through_the_loop_and_counts_the_extra_forward(tmp_path):
    plain = run(tmp_path, "plain", ["train.steps=4", "train.eval_every=0"])
    cached = run(tmp_path, "cached", ["train.steps=4", "train.eval_every=0", "objective.chunk=8"])
    per_image = [json.loads((r.checkpoint / "compute.json").read_text())["flops_per_token"] for r in (plain, cached)]
    assert math.isclose(per_image[1], per_image[0] * 4 / 3, rel_tol=1e-6)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]  # fmt: skip
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_continuing_an_image_checkpoint_starts_from_its_weights_and_checks_the_images(tmp_path):
    source = run(tmp_path, "source", ["train.steps=2", "train.eval_every=0"]).checkpoint
    trained = load_file(source / "model.safetensors")
    learned = [name for name in trained if "running" not in name and "num_batches" not in name]  # no BN stats
    # continuing with zero learning rate keeps every weight: the whole model was carried over
    settings = ["train.steps=1", "train.eval_every=0", "optim.lr=0", f"init={source}"]
    same = run(tmp_path, "same", [*settings, "vision.width=16"])  # the checkpoint's width wins
    continued = load_file(same.checkpoint / "model.safetensors")
    assert json.loads((same.checkpoint / "lineage.json").read_text())[0]["checkpoint"] == str(source.resolve())
    assert set(continued) == set(trained)
    assert [name for name in learned if not torch.equal(continued[name], trained[name])] == []
    # another projection head: only the backbone carries over
    other = run(tmp_path, "other", [*settings, "objective.projection_dim=8"])
    weights = load_file(other.checkpoint / "model.safetensors")
    backbone = [name for name in learned if name.startswith("backbone.")]
    assert backbone and all(torch.equal(weights[name], trained[name]) for name in backbone)
    assert any(weights[name].shape != trained[name].shape for name in trained if name.startswith("projection."))

    bigger = tmp_path / "bigger.npz"
    np.savez(bigger, x_train=np.zeros((8, 12, 12), np.uint8), y_train=np.zeros(8, np.uint8))
    with pytest.raises(HeadstartError, match=r"image_size=8; .*bigger.npz has 12"):
        api.pretrain("gpt-tiny", [*TINY, f"data.images={bigger}", f"run.out_dir={tmp_path}", "objective.name=simclr",
                                  f"init={source}", "train.steps=1"], quiet=True)  # fmt: skip
