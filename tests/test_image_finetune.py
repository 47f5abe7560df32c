import json

import numpy as np
import pytest
import torch

from headstart import api
from headstart.config import TaskConfig
from headstart.errors import HeadstartError
from headstart.objectives.classify import ImageClassify
from headstart.readouts import consistency as consistency_module
from headstart.readouts import distill as distill_module
from headstart.tasks.image import ImageClassifyTask, roc_auc
from headstart.transfer.reference import pixel_features

TINY = [
    "train.steps=30",
    "train.eval_every=10",
    "train.batch_size=16",
    "train.precision=fp32",
    "optim.lr=3e-3",
    "readout=finetune",
    "head_init=random",
]  # plain fine-tuning unless a test names another read-out


def finetune(tmp_path, images, init, *extra):
    origin = [f"init={init}"] if init != "scratch" else ["init=scratch", f"architecture={extra[0]}"]
    settings = [*TINY, f"task.train={images}", "budget=40", f"run.out_dir={tmp_path}", *origin,
                *(e for e in extra if "=" in e)]  # fmt: skip
    return api.finetune("fmnist", settings, quiet=True)


def test_image_fine_tune_from_a_checkpoint_and_from_scratch(tmp_path, tiny_images, tiny_simclr):
    pretrained = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=pre")
    scratch = finetune(tmp_path, tiny_images, "scratch", str(tiny_simclr), "run.name=scratch")
    for result in (pretrained, scratch):
        assert (
            result.metric == "accuracy" and result.metrics["accuracy"] >= 0.8
        )  # an easy two-class task; chance is 0.5
        assert {"macro_f1", "auc"} <= result.metrics.keys() and 0.8 <= result.metrics["auc"] <= 1.0
        assert result.steps == 30 and result.flops > 0
    summary = json.loads((pretrained.run_dir / "result.json").read_text())
    assert summary["budget"] == 40 and summary["init"] == str(tiny_simclr)


@pytest.mark.parametrize("readout", ["logistic", "knn", "propagate"])
def test_frozen_image_backbone_readouts(tmp_path, tiny_images, tiny_simclr, readout):
    result = finetune(tmp_path, tiny_images, str(tiny_simclr), f"readout={readout}",
                      f"run.name={readout}")  # fmt: skip
    assert result.steps == 0 and result.metrics["accuracy"] >= 0.8 and result.flops > 0


def test_text_task_needs_a_text_checkpoint_and_knn_a_classification_task(tmp_path, tiny_simclr, tiny_decoder):
    with pytest.raises(HeadstartError, match=r"task\.kind=classify: expected a text checkpoint"):
        api.finetune("sst2", [f"init={tiny_simclr}", "task.train=x", "task.eval=y"], quiet=True)
    with pytest.raises(
        HeadstartError, match=r"readout=knn: reads task.kind classify or image, not task.kind=translate"
    ):
        api.finetune(
            "multi30k",
            [f"init={tiny_decoder}", "readout=knn", f"run.out_dir={tmp_path}"],
            quiet=True,
        )


def test_fine_tuning_augmentation_is_seeded_and_keeps_shapes(tiny_images):
    task = ImageClassifyTask(TaskConfig(kind="image", train=str(tiny_images), crop_min=0.5, flip=True))
    task.read()
    raw = task.collate(task.encode("train"))(list(range(6)))

    def batch(seed):
        return task.objective.make_batch(raw, torch.Generator().manual_seed(seed))["input"]

    assert batch(1).shape == (6, 1, 8, 8) and batch(1).dtype == torch.float32
    assert torch.equal(batch(1), batch(1)) and not torch.equal(batch(1), batch(2))
    plain = ImageClassify().make_batch(raw, torch.Generator())["input"]
    assert torch.equal(plain, raw["input"].permute(0, 3, 1, 2).float() / 255)


def test_roc_auc_matches_a_hand_computed_case():
    # positives score 0.9, 0.4; negatives 0.5, 0.1: three of four (positive, negative) pairs ranked right
    p = torch.tensor([0.9, 0.4, 0.5, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))], 1)
    assert roc_auc(logits, np.array([1, 1, 0, 0])) == pytest.approx(0.75)
    assert np.isnan(roc_auc(logits, np.array([1, 1, 1, 1])))


def test_pixel_features_are_flat_and_scaled():
    images = np.full((2, 3, 3, 1), 255, dtype=np.uint8)
    features = pixel_features(images)
    assert features.shape == (2, 9) and torch.all(features == 1.0)


def image_study(tmp_path, images, checkpoint, inits):
    path = tmp_path / "study.yaml"
    path.write_text(
        f"""
finetune: fmnist
settings: [task.train={images}, {", ".join(TINY)}]
inits: {inits}
init_settings: {{simclr-knn: [readout=knn]}}
architecture: {checkpoint}
budgets: [20, 0]
seeds: 1
sweep: {{lr: [optim.lr=3e-3], crop: [task.crop_min=0.6]}}
run: {{out_dir: {tmp_path / "runs"}, name: s}}
"""
    )
    return path


def test_image_study_with_frozen_readouts_and_the_pixel_floor(tmp_path, tiny_images, tiny_simclr):
    inits = f"{{simclr: {tiny_simclr}, simclr-knn: {tiny_simclr}, scratch: scratch, pixels: pixels}}"
    report = api.transfer(str(image_study(tmp_path, tiny_images, tiny_simclr, inits)))
    records = [json.loads(x) for x in (report.parent / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 2 and {r["budget"] for r in records} == {20, 96}
    by_init = {(r["init"], r["budget"]): r for r in records}
    assert set(by_init["simclr", 20]["sweep_val"]) == {"lr", "crop"}
    assert list(by_init["simclr-knn", 20]["sweep_val"]) == ["lr"]  # frozen: one readout, no sweep
    assert by_init["simclr-knn", 96]["steps"] == 0
    assert by_init["pixels", 96]["chosen"].startswith("logistic") and by_init["pixels", 96]["accuracy"] >= 0.9
    assert all("auc" in r for r in records)
    assert "pixels" in report.read_text()


def test_image_study_input_errors(tmp_path, tiny_images, tiny_simclr):
    bad_reference = f"{{simclr-knn: {tiny_simclr}, words: ngrams}}"
    with pytest.raises(HeadstartError, match=r"inits\.words=ngrams: this reference reads task\.kind=classify"):
        api.transfer(str(image_study(tmp_path, tiny_images, tiny_simclr, bad_reference)))
    no_such_init = f"{{simclr: {tiny_simclr}}}"
    with pytest.raises(HeadstartError, match=r"init_settings\.simclr-knn: expected the name of a fine-tuned init"):
        api.transfer(str(image_study(tmp_path, tiny_images, tiny_simclr, no_such_init)))


def test_self_training_distils_into_a_student_on_teacher_probabilities(tmp_path, tiny_images, tiny_simclr, monkeypatch):
    seen = []

    def recording(first, second):
        seen.append((first.labels, second.labels))
        return original(first, second)

    original = distill_module.concat_encoded
    monkeypatch.setattr(distill_module, "concat_encoded", recording)
    teacher = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=teacher")
    student = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=student", "readout=distill",
                       "distill_steps=60")  # fmt: skip
    assert (student.run_dir / "student" / "metrics.jsonl").is_file()
    assert student.metrics["accuracy"] >= 0.8 and student.flops > teacher.flops
    ((budget, pool),) = seen
    assert budget.shape == (32, 2) and set(np.unique(budget)) == {0.0, 1.0}  # the labelled budget, one-hot
    assert pool.shape == (96 - 40, 2) and np.allclose(pool.sum(1), 1.0)  # the rest: the teacher's probabilities
    assert not set(np.unique(pool)) <= {0.0, 1.0}
    seen.clear()
    propagated = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=propagated", "readout=distill",
                          "distill_steps=60", "distill_teacher=propagate", "unlabelled=30")  # fmt: skip
    assert propagated.metrics["accuracy"] >= 0.8
    ((budget, pool),) = seen
    assert budget.shape == (32, 2) and pool.shape == (30, 2) and np.allclose(pool.sum(1), 1.0)
    with pytest.raises(HeadstartError, match=r"readout=distil: expected one of .* \(did you mean distill\?\)"):
        finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=typo", "readout=distil")


@pytest.mark.parametrize("flip", [False, True])
def test_fixmatch_consistency_on_images(tmp_path, tiny_images, tiny_simclr, monkeypatch, flip):
    flips = []
    original = consistency_module.build_views
    monkeypatch.setattr(consistency_module, "build_views", lambda *a: flips.append(a[-1].flip) or original(*a))
    result = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=fixmatch", "readout=consistency",
                      "unlabelled_ratio=2", "consistency_threshold=0.7", f"task.flip={flip}")  # fmt: skip
    assert result.steps == 30 and (flip or result.metrics["accuracy"] >= 0.8)  # the classes here are sides
    assert result.best_step == 30  # the final weights are kept, as in FixMatch
    assert flips == [flip, flip]  # weak and strong views mirror images only where the task allows it
    assert "confident" in (result.run_dir / "metrics.jsonl").read_text()


def test_consistency_with_every_label_in_the_budget_fine_tunes_plainly(tmp_path, tiny_images, tiny_simclr):
    result = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=all", "readout=consistency", "budget=0")
    assert result.metrics["accuracy"] >= 0.8  # no unlabelled pool is left: plain fine-tuning, not an error
    assert "confident" not in (result.run_dir / "metrics.jsonl").read_text()


def test_noisy_student_rounds_each_student_teaching_the_next(tmp_path, tiny_images, tiny_simclr, monkeypatch):
    seen = []
    original = distill_module.concat_encoded
    monkeypatch.setattr(distill_module, "concat_encoded", lambda a, b: seen.append(b.labels.copy()) or original(a, b))
    one = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=one", "readout=distill", "distill_steps=20")
    two = finetune(tmp_path, tiny_images, str(tiny_simclr), "run.name=two", "readout=distill", "distill_steps=20",
                   "distill_rounds=2", "distill_noise=true")  # fmt: skip
    assert (two.run_dir / "student-2" / "metrics.jsonl").is_file() and two.flops > one.flops
    first, _, second = seen  # run one's pool, then run two's: the teacher's labels, then student 1's
    assert np.allclose(first, seen[1]) and not np.allclose(seen[1], second)  # same teacher, then a new one
    assert np.allclose(second.sum(1), 1.0)  # student 1's class probabilities label the pool for student 2
