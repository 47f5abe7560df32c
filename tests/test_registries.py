"""Objectives and fine-tuning modes are registry entries: a new one, registered from here with
nothing else changed, pretrains through the one loop and is swept by a study like the shipped ones."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from headstart import api
from headstart.cli import VERBS, build_parser
from headstart.config import FinetuneConfig, PretrainConfig, StudyConfig, load_config
from headstart.config_docs import field_docs
from headstart.errors import HeadstartError
from headstart.objectives.clm import CausalLM
from headstart.objectives.registry import OBJECTIVES, ObjectiveEntry
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.registry import READOUTS, ReadoutEntry
from headstart.train.checkpoint import load_pretrained


class ReversedLM(CausalLM):
    """Next-token prediction on every window read backwards: a test-only objective."""

    name = "reversed-clm"

    def make_batch(self, windows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return super().make_batch(windows.flip(1), generator)


def nearest_centroid(ft: Finetuning) -> Outcome:
    """Each class's mean frozen feature; a test-only readout."""
    task, n_classes = ft.task, ft.model.head.out_features
    (x, y), (vx, vy), (ex, ey) = (task.features(ft.model, part) for part in (ft.fit_set, ft.held_set, ft.eval_set))
    centres = F.normalize(torch.stack([x[y == c].mean(0) for c in range(n_classes)]), dim=1)

    def scores(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1) @ centres.T

    best_val = float((scores(vx).argmax(1) == vy).float().mean())
    return Outcome(task.metrics(scores(ex), ey.numpy()), best_val, ft.features_flops(ft.fit_set, ft.held_set))


@pytest.fixture
def registered(monkeypatch):
    entry = ObjectiveEntry("reversed-clm", "text", lambda config, tokenizer: ReversedLM(), causal=True,
                           passes=lambda config: [(config.model, 1.0, 1.0)])  # fmt: skip
    monkeypatch.setitem(OBJECTIVES, entry.name, entry)
    monkeypatch.setitem(READOUTS, "centroid", ReadoutEntry("centroid", nearest_centroid, ("classify",), frozen=True))


def test_a_registered_objective_pretrains_and_a_registered_readout_is_swept(
    registered, tiny_shards, tmp_path, write_task
):
    overrides = [f"data.shards={tiny_shards}", f"run.out_dir={tmp_path}", "run.name=reversed", "model.n_layer=1",
                 "model.n_head=2", "model.n_embd=32", "model.context=32", "train.seq_len=32", "train.batch_size=8",
                 "train.steps=30", "train.eval_every=15", "train.precision=fp32", "embeddings.init=random",
                 "objective.name=reversed-clm", "optim.lr=3e-3", "schedule.warmup_steps=3"]  # fmt: skip
    result = api.pretrain("gpt-tiny", overrides, quiet=True)
    losses = [json.loads(line) for line in (tmp_path / "reversed" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in losses if "val_loss" in r]
    assert val[-1] < val[0] and "val_ppl" in result.last_eval
    _, config, _ = load_pretrained(result.checkpoint)
    assert config.objective.name == "reversed-clm" and config.model.causal

    train, dev = write_task(tmp_path / "train.jsonl", 100, 0), write_task(tmp_path / "dev.jsonl", 40, 1)
    study = tmp_path / "study.yaml"
    study.write_text(f"""
finetune: sst2
settings: [task.train={train}, task.eval={dev}, task.max_len=16, train.steps=10, train.precision=fp32]
inits: {{reversed: {result.checkpoint}, scratch: scratch}}
budgets: [40]
seeds: 2
sweep: {{centroid: [readout=centroid], probe: [readout=logistic]}}
run: {{out_dir: {tmp_path / "studies"}, name: s}}
""")
    report = api.transfer(str(study))
    cells = [json.loads(line) for line in (report.parent / "results.jsonl").read_text().splitlines()]
    assert len(cells) == 4 and all(set(c["sweep_val"]) == {"centroid", "probe"} for c in cells)
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in cells)
    assert "| reversed |" in report.read_text()


def test_unknown_names_are_refused_with_a_suggestion(tiny_encoder, tmp_path):
    with pytest.raises(HeadstartError, match=r"objective\.name=mml: expected one of .*did you mean mlm"):
        api.pretrain("bert-tiny", ["objective.name=mml", "data.shards=x"], quiet=True)
    with pytest.raises(HeadstartError, match=r"readout=prope: .*did you mean"):
        api.finetune("sst2", [f"init={tiny_encoder}", "readout=prope", "task.train=x", "task.eval=y"], quiet=True)


def test_config_problems_are_reported_together():
    with pytest.raises(HeadstartError) as caught:
        load_config(PretrainConfig, "gpt-tiny", ["train.steps=0", "optim.lr=-1", "objective.mask_prob=1.5"])
    message = str(caught.value)
    assert "train.steps=0: expected a positive integer" in message
    assert "optim.lr=-1.0: expected at least 0" in message and "objective.mask_prob=1.5" in message
    assert "\n" not in message
    with pytest.raises(HeadstartError, match=r"init_optimizer=carry: .* set init=CHECKPOINT"):
        load_config(PretrainConfig, "gpt-tiny", ["init_optimizer=carry"])


@pytest.mark.parametrize("config", [PretrainConfig, FinetuneConfig, StudyConfig])
def test_every_config_field_is_documented(config):
    def undocumented(cls):
        docs = field_docs(cls)
        for item in dataclasses.fields(cls):
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            if dataclasses.is_dataclass(default):
                yield from undocumented(type(default))
            elif not docs.get(item.name):
                yield f"{cls.__name__}.{item.name}"

    assert list(undocumented(config)) == []


def test_help_config_lists_the_fields_and_every_verb_has_a_handler(capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["finetune", "--help-config"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert "readout  str = 'finetune'" in shown and "train.steps  int = 300" in shown
    subparsers = next(a for a in build_parser()._actions if a.dest == "verb")
    assert set(subparsers.choices) == set(VERBS)
