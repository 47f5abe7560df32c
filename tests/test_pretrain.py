import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from headstart import api
from headstart.errors import HeadstartError
from headstart.workflows import pretrain_data as pretrain_module

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.context=32",
    "train.batch_size=4",
    "train.seq_len=32",
    "train.precision=fp32",
    "train.eval_batches=2",
    "train.log_every=1",
    "schedule.warmup_steps=3",
    "optim.lr=3e-3",
]


def run(shards, tmp_path, name, extra=(), recipe="gpt-tiny", resume=False):
    overrides = [*TINY, f"data.shards={shards}", f"run.out_dir={tmp_path}", f"run.name={name}", *extra]
    return api.pretrain(recipe, overrides, resume=resume, quiet=True)


def weights(result):
    return load_file(str(result.checkpoint / "model.safetensors"))


@pytest.mark.parametrize("recipe", ["gpt-tiny", "bert-tiny"])
def test_loss_falls_and_checkpoint_is_complete(tiny_shards, tmp_path, recipe):
    result = run(tiny_shards, tmp_path, recipe, ["train.steps=40", "train.eval_every=20"], recipe=recipe)
    records = [json.loads(x) for x in (tmp_path / recipe / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if "loss" in r]
    assert train[-1] < 0.75 * train[0]  # random word order: the floor is about ln(36 words)
    files = {p.name for p in result.checkpoint.iterdir()}
    assert files >= {
        "config.yaml",
        "model.safetensors",
        "tokenizer.json",
        "state.pt",
        "metrics.jsonl",
        "compute.json",
        "manifest.json",
    }
    compute = json.loads((result.checkpoint / "compute.json").read_text())
    assert compute["tokens"] == 40 * 4 * 32
    loop_flops = compute["flops_per_token"] * compute["tokens"]
    if recipe == "gpt-tiny":  # its skip-gram warm start is counted too
        assert loop_flops < compute["flops"] < 1.1 * loop_flops
    else:
        assert compute["flops"] == pytest.approx(loop_flops)
    assert {"val_loss", "val_ppl", "val_bpb"} <= set(result.last_eval)
    if recipe == "bert-tiny":
        assert "val_masked_accuracy" in result.last_eval


@pytest.mark.parametrize(
    ("recipe", "optimizer"),
    [("gpt-tiny", "adamw"), ("bert-tiny", "adamw"), ("gpt-tiny", "muon")],
    ids=["gpt-tiny", "bert-tiny", "gpt-tiny-muon"],
)
def test_resume_after_crash_is_bitwise_exact(tiny_shards, tmp_path, recipe, optimizer, monkeypatch):
    settings = ["train.steps=10", "train.checkpoint_every=4", "train.eval_every=5", "model.dropout=0.1",
                f"optim.name={optimizer}"]  # fmt: skip
    straight = run(tiny_shards, tmp_path, "straight", settings, recipe=recipe)

    original = pretrain_module.TrainWindows.batch
    calls = {"n": 0}

    def crash_at_step_7(self, first, count):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("simulated crash")
        return original(self, first, count)

    monkeypatch.setattr(pretrain_module.TrainWindows, "batch", crash_at_step_7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_shards, tmp_path, "crashed", settings, recipe=recipe)
    monkeypatch.setattr(pretrain_module.TrainWindows, "batch", original)
    resumed = run(tiny_shards, tmp_path, "crashed", settings, recipe=recipe, resume=True)

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = lambda name: [  # noqa: E731
        json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    ]
    losses = lambda rows: [r.get("loss", r.get("val_loss")) for r in rows]  # noqa: E731
    assert losses(metrics("straight")) == losses(metrics("crashed"))


def test_interrupt_checkpoints_then_resume_matches(tiny_shards, tmp_path, monkeypatch):
    settings = ["train.steps=8", "train.checkpoint_every=100", "train.eval_every=0"]
    straight = run(tiny_shards, tmp_path, "straight", settings)
    original = pretrain_module.TrainWindows.batch
    calls = {"n": 0}

    def interrupt_at_step_3(self, first, count):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, first, count)

    monkeypatch.setattr(pretrain_module.TrainWindows, "batch", interrupt_at_step_3)
    stopped = run(tiny_shards, tmp_path, "stopped", settings)
    assert stopped.interrupted and stopped.step == 3
    monkeypatch.setattr(pretrain_module.TrainWindows, "batch", original)
    resumed = run(tiny_shards, tmp_path, "stopped", settings, resume=True)
    assert resumed.step == 8
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config_and_existing_run_needs_resume(tiny_shards, tmp_path):
    run(tiny_shards, tmp_path, "r", ["train.steps=2"])
    with pytest.raises(HeadstartError, match="--resume"):
        run(tiny_shards, tmp_path, "r", ["train.steps=2"])
    with pytest.raises(HeadstartError, match=r"optim\.lr was"):
        run(tiny_shards, tmp_path, "r", ["train.steps=2", "optim.lr=0.5"], resume=True)
    assert run(tiny_shards, tmp_path, "r", ["train.steps=2", "train.eval_every=1"], resume=True).step == 2


def test_resume_refuses_another_step_count(tiny_shards, tmp_path):
    """The schedule spans train.steps: resuming with another count would bend it mid-run."""
    run(tiny_shards, tmp_path, "r", ["train.steps=4", "train.max_minutes=0.0001"])  # stops after its first step
    with pytest.raises(HeadstartError, match=r"train\.steps was 4, now 8.*init=.*init_optimizer=carry"):
        run(tiny_shards, tmp_path, "r", ["train.steps=8"], resume=True)
    assert run(tiny_shards, tmp_path, "r", ["train.steps=4"], resume=True).step == 4


def test_corrupted_checkpoint_is_named(tiny_shards, tmp_path):
    result = run(tiny_shards, tmp_path, "c", ["train.steps=2"])
    weights_file = result.checkpoint / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-100])
    with pytest.raises(HeadstartError, match="corrupted or truncated"):
        api.evaluate(result.checkpoint)


def test_vocab_mismatch_and_context_errors(tiny_shards, tmp_path):
    with pytest.raises(HeadstartError, match=r"tokenizer of .* has \d+ tokens"):
        run(tiny_shards, tmp_path, "v", ["train.steps=1", "model.vocab_size=77"])
    with pytest.raises(HeadstartError, match=r"longer than model\.context"):
        run(tiny_shards, tmp_path, "v", ["train.steps=1", "train.seq_len=64"])


def test_evaluate_generate_fill_mask(tiny_shards, tmp_path):
    clm = run(tiny_shards, tmp_path, "g", ["train.steps=30"])
    scores = api.evaluate(clm.checkpoint)
    assert scores["val_loss"] == pytest.approx(clm.last_eval["val_loss"], rel=0.2)
    raw = tmp_path / "raw.txt"
    raw.write_text("the cat sat on a mat\nbirds sang over green hills\n")
    assert api.evaluate(clm.checkpoint, [str(raw)])["val_loss"] > 0
    greedy = api.generate(clm.checkpoint, "the cat", max_new_tokens=10, temperature=0)
    assert greedy == api.generate(clm.checkpoint, "the cat", max_new_tokens=10, temperature=0)
    assert isinstance(api.generate(clm.checkpoint, "the", max_new_tokens=5, top_k=5, top_p=0.9), str)
    mlm = run(tiny_shards, tmp_path, "m", ["train.steps=30"], recipe="bert-tiny")
    predictions = api.fill_mask(mlm.checkpoint, "the cat <mask> on a mat", top_k=3)
    assert len(predictions) == 1 and len(predictions[0]) == 3
    assert sum(p for _, p in predictions[0]) <= 1.0 + 1e-6
    electra = run(tiny_shards, tmp_path, "e", ["train.steps=30", "objective.generator_layers=1"], recipe="electra-tiny")
    assert "val_detection_accuracy" in electra.last_eval and "val_ppl" not in electra.last_eval
    assert len(api.fill_mask(electra.checkpoint, "the cat <mask> on a mat", top_k=2)[0]) == 2  # by its generator


@pytest.mark.slow
def test_compiled_training_matches_eager_closely(tiny_shards, tmp_path):
    settings = ["train.steps=4", "train.eval_every=0"]
    eager = run(tiny_shards, tmp_path, "eager", settings)
    compiled = run(tiny_shards, tmp_path, "compiled", [*settings, "train.compile=true"])
    a, b = weights(eager), weights(compiled)
    assert a.keys() == b.keys()  # the compiled wrapper leaves no prefix in the checkpoint
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_a_minutes_budget_counts_the_skipgram_warm_start(tiny_shards, tmp_path, monkeypatch):
    from headstart.workflows import pretrain as workflow

    monkeypatch.setattr(workflow, "seconds_per_step", lambda config: 0.1)
    warm = lambda self, model, config: (0.0, 3.0, "warm start")  # noqa: E731 (3 of the 6 seconds)
    monkeypatch.setattr(pretrain_module.TextData, "warm_start", warm)
    overrides = [*TINY, f"data.shards={tiny_shards}", f"run.out_dir={tmp_path}", "run.name=budget"]
    result = api.pretrain("gpt-tiny", [*overrides, "train.eval_every=0"], minutes=0.1, quiet=True)
    assert result.step == int(3.0 / 0.1 * 0.95)  # 28: the steps that fit what the warm start left
    assert "steps: 28" in (tmp_path / "budget" / "config.yaml").read_text()
    with pytest.raises(HeadstartError, match="--minutes with --resume"):
        api.pretrain("gpt-tiny", overrides, minutes=0.1, resume=True, quiet=True)


def test_a_compiled_run_is_planned_at_the_compiled_speed(tiny_shards, tmp_path, monkeypatch):
    """Planned at the eager speed, a compiled run would end early: its steps come from a compiled probe."""
    from headstart.workflows import pretrain as workflow

    monkeypatch.setattr(workflow, "seconds_per_step", lambda config: 0.05 if config.train.compile is True else 0.1)
    monkeypatch.setattr(workflow, "pick_compile", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch, "compile", lambda model: model)  # the plan is under test, not Inductor
    warm = lambda self, model, config: (0.0, 3.0, "warm start")  # noqa: E731
    monkeypatch.setattr(pretrain_module.TextData, "warm_start", warm)
    overrides = [
        *TINY,
        f"data.shards={tiny_shards}",
        f"run.out_dir={tmp_path}",
        "run.name=compiled",
        "train.eval_every=0",
    ]
    result = api.pretrain("gpt-tiny", overrides, minutes=0.1, quiet=True)
    assert 50 <= result.step <= int(3.0 / 0.05 * 0.95)  # twice the eager plan's 28, less the probes' own seconds
    saved = (tmp_path / "compiled" / "config.yaml").read_text()
    assert "compile: true" in saved and f"steps: {result.step}" in saved
