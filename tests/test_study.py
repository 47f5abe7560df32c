import json
import shutil
from pathlib import Path

import pytest
import yaml

from headstart import api
from headstart.config import StudyConfig
from headstart.errors import HeadstartError
from headstart.train.checkpoint import resolve_checkpoint
from headstart.transfer.pilot import ladder, pilot_study
from headstart.transfer.report import mean_and_interval
from headstart.transfer.study import differs_from, round_fits


@pytest.fixture
def encoder(tiny_encoder):
    return tiny_encoder


def study_yaml(write_task, tmp_path, encoder, corpus, sweep_lr="3e-3", budgets="[20, 60]", train_size=120):
    train, dev = write_task(tmp_path / "train.jsonl", train_size, 0), write_task(tmp_path / "dev.jsonl", 60, 1)
    path = tmp_path / "study.yaml"
    path.write_text(
        f"""
finetune: sst2
settings: [task.train={train}, task.eval={dev}, task.max_len=16, train.steps=20, train.eval_every=10,
           train.precision=fp32, train.batch_size=8]
inits: {{pretrained: {encoder}, scratch: scratch, skipgram: skipgram, ngrams: ngrams}}
budgets: {budgets}
seeds: 2
sweep: {{probe: [readout=logistic], lr: [optim.lr={sweep_lr}]}}
reference_text: [{corpus}, {train}]
run: {{out_dir: {tmp_path / "runs"}, name: s}}
"""
    )
    return path


def test_study_writes_results_report_and_plots_and_resumes(tmp_path, encoder, tiny_shards, write_task):
    corpus = tiny_shards.parent / "corpus.txt"
    path = study_yaml(write_task, tmp_path, encoder, corpus)
    report = api.transfer(str(path))
    folder = report.parent
    records = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 2 * 2  # inits × budgets × seeds
    for record in records:
        assert {"init", "task", "budget", "seed", "metric", "value", "steps", "flops"} <= record.keys()
        assert 0.0 <= record["value"] <= 1.0
    fine_tuned = [r for r in records if r["init"] in ("pretrained", "scratch")]
    assert all(r["chosen"] in ("probe", "lr") and set(r["sweep_val"]) == {"probe", "lr"} for r in fine_tuned)
    assert all(r["sweep_flops"] >= r["flops"] > 0 for r in fine_tuned)
    assert {r["budget"] for r in records} == {20, 60}
    text = report.read_text()
    for heading in ("Label efficiency", "Steps to target", "Compute", "What each init was given and chose"):
        assert heading in text
    assert (folder / "metric_vs_labels.png").stat().st_size > 5000
    assert (folder / "metric_vs_step.png").stat().st_size > 5000
    # A rerun finds every cell finished and runs none; a cell lost mid-write is rerun.
    lines = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    api.transfer(str(path))
    rerun = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines() if x.endswith("}")]
    assert len(rerun) == len(records)
    assert rerun[:-1] == records[:-1] and rerun[-1]["init"] == records[-1]["init"]
    # Changing what every cell was given would make old cells incomparable.
    with pytest.raises(HeadstartError, match="sweep was"):
        api.transfer(str(study_yaml(write_task, tmp_path, encoder, corpus, sweep_lr="1e-3")))
    # A new init joins a finished study and runs only its own cells; an init's source is fixed.
    path = study_yaml(write_task, tmp_path, encoder, corpus)
    with pytest.raises(HeadstartError, match="init 'pretrained' was"):
        api.transfer(str(path), [f"inits.pretrained={encoder}/"])
    api.transfer(str(path), [f"inits.again={encoder}", "budgets=[20]", "seeds=1"])
    joined = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines() if x.endswith("}")]
    assert joined[: len(rerun)] == rerun and [(r["init"], r["budget"]) for r in joined[len(rerun) :]] == [("again", 20)]
    # A study listing only some of the directory's inits runs those; the report and study.yaml keep them all.
    alone = tmp_path / "alone.yaml"
    text = path.read_text().replace(
        f"inits: {{pretrained: {encoder}, scratch: scratch, skipgram: skipgram, ngrams: ngrams}}",
        f"inits: {{frozen: {encoder}}}\ninit_settings: {{frozen: [readout=logistic]}}",
    )
    alone.write_text(text.replace("seeds: 2", "seeds: 1").replace("budgets: [20, 60]", "budgets: [20]"))
    report = api.transfer(str(alone)).read_text()
    assert "| frozen |" in report and "| pretrained |" in report and "| again |" in report
    saved = yaml.safe_load((folder / "study.yaml").read_text())
    assert set(saved["inits"]) == {"pretrained", "scratch", "skipgram", "ngrams", "again", "frozen"}
    assert saved["init_settings"] == {"frozen": ["readout=logistic"]}


def other_tokenizer(checkpoint, tmp_path):
    """A copy of ``checkpoint`` whose tokenizer has one merge fewer, re-manifested so it verifies."""
    import hashlib
    import shutil

    from headstart.train.checkpoint import manifest_digest

    copy = tmp_path / "other-tokenizer"
    shutil.copytree(checkpoint, copy)
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"]["tokenizer.json"] = hashlib.sha256((copy / "tokenizer.json").read_bytes()).hexdigest()
    manifest["self"] = manifest_digest(manifest["sha256"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_study_input_errors(tmp_path, encoder, tiny_shards, write_task):
    corpus = tiny_shards.parent / "corpus.txt"
    with pytest.raises(HeadstartError, match="5000 labels asked"):
        api.transfer(str(study_yaml(write_task, tmp_path, encoder, corpus, budgets="[5000]")))
    with pytest.raises(HeadstartError, match="missing-run"):
        api.transfer(
            str(study_yaml(write_task, tmp_path, encoder, corpus)), [f"inits.pretrained={tmp_path}/missing-run"]
        )
    with pytest.raises(HeadstartError, match=r"inits.other=.*: its tokenizer differs"):
        api.transfer(
            str(study_yaml(write_task, tmp_path, encoder, corpus)),
            [f"inits.other={other_tokenizer(encoder, tmp_path)}"],
        )
    with pytest.raises(HeadstartError, match="the skipgram init needs unlabelled text"):
        api.transfer(str(study_yaml(write_task, tmp_path, encoder, corpus)), ["reference_text=[]"])


def test_mean_and_interval_uses_the_t_quantile():
    mean, half = mean_and_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / 3**0.5)  # t(0.975, 2)
    assert mean_and_interval([0.5]) == (0.5, 0.0)


def test_a_signal_stops_the_whole_study_and_records_no_half_trained_cell(
    tmp_path, encoder, tiny_shards, write_task, monkeypatch
):
    import os
    import signal
    from dataclasses import replace

    import headstart.readouts.full as full_module
    from headstart.errors import Interrupted

    real_loop, calls = full_module.train_loop, []

    def loop_signalled_in_its_second_run(job, outputs, start=None):
        calls.append(1)
        evaluate = outputs.evaluate

        def evaluate_then_signal(model):
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends; the loop's handler catches it
            return evaluate(model)

        return real_loop(job, replace(outputs, evaluate=evaluate_then_signal), start)

    monkeypatch.setattr(full_module, "train_loop", loop_signalled_in_its_second_run)
    path = study_yaml(write_task, tmp_path, encoder, tiny_shards.parent / "corpus.txt")
    with pytest.raises(Interrupted, match="1 of 16 cells are saved; rerun"):
        api.transfer(str(path))  # the first cell's probe and fine-tune finish; the second cell's is signalled
    records = (tmp_path / "runs" / "s" / "results.jsonl").read_text().splitlines()
    assert len(records) == 1 and json.loads(records[0])["init"] == "pretrained"
    assert len(calls) == 2  # the study stopped at once instead of going on to the next cell


def test_scratch_twin_check_fills_defaults_and_catches_a_different_shape(tmp_path, encoder):
    """A checkpoint written before a settings field existed is still the same model; another depth is not."""

    def copy_with(name, edit):
        folder = tmp_path / name / "checkpoints" / "step_00000001"
        shutil.copytree(resolve_checkpoint(encoder), folder)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        edit(config["model"])
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        return str(tmp_path / name)

    older = copy_with("older", lambda model: model.pop("kind"))
    deeper = copy_with("deeper", lambda model: model.update(n_layer=model["n_layer"] + 1))
    assert differs_from(older, str(encoder)) == ""
    assert differs_from(deeper, str(encoder)) == "model settings"


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[1].glob("examples/studies/*.yaml")), ids=lambda p: p.stem
)
def test_every_example_study_and_each_cell_config_is_valid(path):
    """The shipped studies parse, and every init's settings with every sweep candidate make a valid
    fine-tune config (readouts and their options included), before anything runs."""
    from headstart.config import FinetuneConfig, StudyConfig, load_config
    from headstart.readouts import readout_entry

    study = load_config(StudyConfig, str(path))
    for name, source in study.inits.items():
        if source in ("skipgram", "ngrams", "pixels"):
            continue
        for overrides in study.sweep.values():
            config = load_config(FinetuneConfig, study.finetune, [*study.settings, *overrides,
                                                                   *study.init_settings.get(name, [])])  # fmt: skip
            readout_entry(config.readout, config.task.kind)


def test_a_candidate_an_init_setting_makes_identical_to_another_runs_once(tmp_path, encoder, tiny_shards, write_task):
    corpus = tiny_shards.parent / "corpus.txt"
    path = study_yaml(write_task, tmp_path, encoder, corpus, budgets="[20]")
    text = path.read_text().replace(
        f"inits: {{pretrained: {encoder}, scratch: scratch, skipgram: skipgram, ngrams: ngrams}}",
        f"inits: {{plain: {encoder}}}\ninit_settings: {{plain: [readout=finetune, optim.lr=3e-3]}}",
    )
    path.write_text(text)
    api.transfer(str(path))
    records = [json.loads(x) for x in (tmp_path / "runs" / "s" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(set(r["sweep_val"]) == {"probe"} for r in records)  # `lr` would repeat it
    # a candidate kept to small budgets: not run at 60 labels; a study where none would run is refused
    api.transfer(str(path), ["budgets=[20,60]", "seeds=1", "sweep_max_budget={probe: 20}", "run.name=capped"])
    capped = [json.loads(x) for x in (tmp_path / "runs" / "capped" / "results.jsonl").read_text().splitlines()]
    assert [(r["budget"], set(r["sweep_val"])) for r in capped] == [(20, {"probe"}), (60, {"lr"})]
    with pytest.raises(HeadstartError, match="no sweep candidate runs at budget 60"):
        api.transfer(str(path), ["budgets=[60]", "sweep_max_budget={probe: 20, lr: 20}", "run.name=none"])


def test_another_seed_round_runs_only_if_the_last_one_fits_in_the_time_left():
    assert round_fits(None, left=0.0)  # the first round always runs
    assert round_fits(40.0, left=40.0) and not round_fits(40.0, left=39.0)


def test_pilot_ladder_grows_by_four_up_to_half_the_forecast_budget():
    assert ladder(50, 2000, 67_000) == [50, 200, 800]
    assert ladder(10, 100_000, 1000) == [10, 40, 160]  # and up to half the examples
    with pytest.raises(HeadstartError, match=r"--smallest 200: budgets ×4 up to 1,000 .* fewer than 3"):
        ladder(200, 2000, 67_000)


def test_pilot_leaves_out_the_supervised_duplicate_and_small_budget_candidates():
    config = StudyConfig(
        inits={"pretrained": "ckpt", "scratch": "scratch", "supervised": "scratch"},
        init_settings={"supervised": ["readout=finetune"]},
        supervised="supervised",
        sweep={"probe": ["readout=logistic"], "full": ["optim.lr=3e-4"], "setfit": ["readout=setfit"]},
        sweep_max_budget={"setfit": 500},
    )
    pilot = pilot_study(config, [50, 200, 800])
    assert list(pilot.inits) == ["pretrained", "scratch"] and pilot.supervised == "" and pilot.init_settings == {}
    assert pilot.problems() == []
    assert list(pilot.sweep) == ["probe", "full"] and pilot.run.name == "study-pilot"
    assert list(pilot_study(config, [5, 20, 80]).sweep) == ["probe", "full", "setfit"]


def test_pilot_runs_seed_rounds_forecasts_and_gives_a_verdict(tmp_path, encoder, tiny_shards, write_task):
    path = study_yaml(write_task, tmp_path, encoder, tiny_shards.parent / "corpus.txt", train_size=300)
    overrides = ["sweep={lr: [optim.lr=3e-3]}", "seeds=2"]
    pilot = api.pilot(str(path), minutes=10, forecast_at=1000, smallest=8, overrides=overrides)
    assert pilot.parent.name == "s-pilot"
    records = [json.loads(x) for x in (pilot.parent / "results.jsonl").read_text().splitlines()]
    # ×4 up to half of the 300 examples; every budget for seed 0 before any for seed 1
    inits = ("pretrained", "scratch", "skipgram", "ngrams")
    assert [(r["seed"], r["budget"], r["init"]) for r in records] == [
        (seed, budget, init) for seed in (0, 1) for budget in (8, 32, 128) for init in inits
    ]
    text = pilot.read_text()
    assert "budgets measured: 8, 32, 128, 2 seeds each" in text
    assert "| pretrained |" in text and "| scratch |" in text and "at 1,000 labels (forecast)" in text
    assert "`pretrained` against `scratch` at 1,000 labels: pretraining **" in text
    assert "## Forecast" in (pilot.parent / "report.md").read_text()
    # no time after the first seed round: every budget has seed 0, and one seed gives no interval to judge by
    short = api.pilot(str(path), minutes=1e-6, forecast_at=1000, smallest=8, overrides=[*overrides, "run.name=short"])
    rows = [json.loads(x) for x in (short.parent / "results.jsonl").read_text().splitlines()]
    assert {(r["seed"], r["budget"]) for r in rows} == {(0, 8), (0, 32), (0, 128)}
    assert "no verdict: one seed round" in short.read_text()
