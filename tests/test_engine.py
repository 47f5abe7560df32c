"""The training engine's parts: the loop's state and callbacks, checkpoint durability, the peak
probe behind MFU, and the statistics and compute figures the study report prints."""

import json
import os
import pickle
import shutil
import time
from dataclasses import replace

import pytest
import torch
from scipy import stats
from torch import nn

from headstart import api
from headstart.config import StudyConfig
from headstart.train import checkpoint as ckpt
from headstart.train import device as device_module
from headstart.train import flops as flops_module
from headstart.train.device import pick_compile, pick_precision
from headstart.train.state import TrainState
from headstart.transfer.reference import WordVectors, read_vectors, write_vectors
from headstart.transfer.report import compute_section, mean_and_interval, steps_to_target_rows, write_report
from tests.test_faults import TIMING  # wall-clock and memory fields: never equal between two runs

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.context=16", "train.seq_len=16",
        "train.batch_size=4", "train.precision=fp32", "train.eval_batches=1", "train.log_every=1",
        "embeddings.init=random", "schedule.warmup_steps=1"]  # fmt: skip


def pretrain(shards, tmp_path, name, *extra, resume=False):
    overrides = [*TINY, f"data.shards={shards}", f"run.out_dir={tmp_path}", f"run.name={name}", *extra]
    return api.pretrain("gpt-tiny", overrides, resume=resume, quiet=True)


@pytest.mark.parametrize("torn", ['{"step": 2, "loss": 3.1', '{"step": 2, "loss": 3.1, "lr": 0.001}'])
def test_resume_reads_past_a_torn_metrics_line(torn, tiny_shards, tmp_path):
    """A run killed in the middle of a metrics write leaves half a record, or a record without its
    line end; --resume starts from the checkpoint's copy of the log instead."""
    straight = pretrain(tiny_shards, tmp_path, "straight", "train.steps=6")
    pretrain(tiny_shards, tmp_path, "torn", "train.steps=6", "train.max_minutes=0.00001")  # stops after step 1
    metrics = tmp_path / "torn" / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write(torn)
    resumed = pretrain(tiny_shards, tmp_path, "torn", "train.steps=6", resume=True)
    assert resumed.step == 6
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line whole
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))
    steps = [{k: v for k, v in r.items() if k not in TIMING} for r in records if "loss" in r]
    straight_records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [{k: v for k, v in r.items() if k not in TIMING} for r in straight_records if "loss" in r]
    a, b = (ckpt.load_pretrained(r.checkpoint)[0].state_dict() for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_durable_before_older_ones_are_pruned(tmp_path, monkeypatch):
    """Every file and the renamed directory reach the disk before an older checkpoint is removed,
    so a crash between the rename and the pruning leaves a whole checkpoint behind."""
    model = nn.Linear(3, 2)
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, 1, model, {"step": 1}, {}, keep=1)
    events: list[str] = []
    real_fsync, real_rmtree = os.fsync, shutil.rmtree

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rmtree(path, *args, **kwargs):
        if "step_00000001" in str(path):
            events.append("prune")
            raise KeyboardInterrupt  # the crash, between the rename and the pruning
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(root, 2, model, {"step": 2}, {}, keep=1)
    synced = [e.removeprefix("fsync ") for e in events if e.startswith("fsync")]
    files = [name for name in ("model.safetensors", "state.pt", "config.yaml", "manifest.json")]
    assert all(any(s.endswith(name) for s in synced) for name in files)  # in the temporary folder
    assert events[-2:] == [f"fsync {root.resolve()}", "prune"]  # the rename flushed, then pruning
    monkeypatch.undo()
    newest = ckpt.list_checkpoints(root)[-1]
    assert newest.name == "step_00000002"
    ckpt.verify(newest)


def test_mfu_is_throughput_over_the_measured_peak(tiny_shards, tmp_path, monkeypatch):
    """One process: MFU = tokens/s × FLOPs per token ÷ the probe's peak (two ranks: test_distributed)."""
    peak = 1e11
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(flops_module, "measure_peak_flops", lambda dtype, device: peak)
    result = pretrain(tiny_shards, tmp_path, "mfu", "train.steps=3")
    fpt = json.loads((result.checkpoint / "compute.json").read_text())["flops_per_token"]
    records = [json.loads(line) for line in (tmp_path / "mfu" / "metrics.jsonl").read_text().splitlines()]
    for record in (r for r in records if "mfu" in r):
        assert record["mfu"] == pytest.approx(record["tokens_per_s"] * fpt / peak)


def test_peak_cache_expires_and_the_probe_keeps_the_fastest(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(flops_module, "measure_peak_flops", lambda dtype, device: calls.append(1) or 5e10)
    cpu = torch.device("cpu")
    assert flops_module.peak_flops(torch.float32, cpu) == 5e10 and len(calls) == 1
    assert flops_module.peak_flops(torch.float32, cpu) == 5e10 and len(calls) == 1  # cached
    path = flops_module.peak_cache_path(torch.float32, cpu)
    stale = time.time() - (flops_module.PEAK_CACHE_DAYS + 1) * 86400
    path.write_text(json.dumps({"flops": 1.0, "measured_at": stale}))
    assert flops_module.peak_flops(torch.float32, cpu) == 5e10 and len(calls) == 2  # measured again


def test_bf16_is_measured_on_a_gpu_too(monkeypatch):
    """On a GPU that runs bf16 but not faster than fp32, auto keeps fp32."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(device_module, "peak_flops", lambda dtype, device: 1e12)
    assert pick_precision("auto", torch.device("cuda")) == torch.float32
    monkeypatch.setattr(device_module, "peak_flops", lambda dtype, device: 4e12 if dtype == torch.bfloat16 else 1e12)
    assert pick_precision("auto", torch.device("cuda")) == torch.bfloat16


def test_compile_auto_only_where_it_was_measured_to_pay(monkeypatch):
    """auto: one process pretraining a transformer decoder for 500+ steps, where Inductor builds."""
    from headstart.config import ModelConfig
    from headstart.models.mamba import Mamba
    from headstart.models.transformer import Transformer

    decoder = Transformer(ModelConfig(n_layer=1, n_head=2, n_embd=16, context=8, vocab_size=32))
    monkeypatch.setattr(device_module, "inductor_builds", lambda device_type: True)
    assert pick_compile("auto", decoder, "clm", steps=500, processes=1)
    assert not pick_compile("auto", decoder, "clm", steps=499, processes=1)  # too short to repay compiling
    assert not pick_compile("auto", decoder, "mlm", steps=5000, processes=1)  # not measured
    assert not pick_compile("auto", decoder, "clm", steps=5000, processes=2)
    mamba = Mamba(ModelConfig(kind="mamba", n_layer=1, n_embd=16, context=8, vocab_size=32))
    assert not pick_compile("auto", mamba, "clm", steps=5000, processes=1)
    assert pick_compile(True, decoder, "mlm", steps=1, processes=2) and not pick_compile(False, decoder, "clm", 5000, 1)
    monkeypatch.setattr(device_module, "inductor_builds", lambda device_type: False)  # no compiler here
    assert not pick_compile("auto", decoder, "clm", steps=5000, processes=1)


@pytest.mark.parametrize("n", [2, 3, 5, 12, 13, 25, 40, 100])
def test_intervals_use_the_exact_t_quantile(n):
    values = [float((7 * i) % 11) for i in range(n)]
    low, high = stats.t.interval(0.95, n - 1, loc=sum(values) / n, scale=stats.sem(values))
    _, half = mean_and_interval(values)
    assert half == pytest.approx((high - low) / 2, rel=1e-9)


def _cell(run: str, flops: float) -> dict:
    return {"value": 0.5, "sweep_flops": flops, "run": run, "chosen": "lr"}


def test_break_even_counts_sweeps_from_scratch(tmp_path):
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "manifest.json").write_text("{}")
    (pretrained / "compute.json").write_text(json.dumps({"flops": 6e12, "wall_seconds": 60, "device": "cpu"}))
    config = StudyConfig(inits={"pre": str(pretrained), "scratch": "scratch"})
    table = {"pre": {10: [_cell("a", 1e9)]}, "scratch": {10: [_cell("b", 3e9), _cell("c", 3e9)]}}
    lines = compute_section(table, config, references=None)
    row = next(line for line in lines if line.startswith("| pre |"))
    assert row.endswith("| 2,000 |")  # 6e12 / 3e9: the scratch sweep, not the init's own 1e9
    assert any("a scratch sweep" in line for line in lines)


def test_steps_to_target_says_unmeasured_when_no_curve_is_kept(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_bleu": 12.0}) + "\n")
    config = StudyConfig(inits={"pre": "somewhere"})
    lines = steps_to_target_rows({"pre": {10: [_cell("a", 1.0)]}}, config, [10], runs, "bleu", 20.0, "set")
    assert lines[0].startswith("Not measured") and "—" not in "".join(lines)
    (runs / "a" / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval_bleu": 25.0}) + "\n")
    lines = steps_to_target_rows({"pre": {10: [_cell("a", 1.0)]}}, config, [10], runs, "bleu", 20.0, "set")
    assert lines[-1] == "| pre | 10 (1/1) |"


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cached_word_vectors_never_unpickle_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "skipgram.pt"
    write_vectors(WordVectors({"a": 0}, torch.ones(1, 4), 1.5, 10), path)
    assert read_vectors(path).vocabulary == {"a": 0}
    path.write_bytes(pickle.dumps({"vocabulary": Payload()}))
    assert read_vectors(path) is None and not (tmp_path / "pwned").exists()


def test_train_state_round_trips_counters_and_rng():
    """What a checkpoint's state.pt restores: the run's position and torch's random stream."""
    model = nn.Linear(2, 2)
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), step=3, tokens_seen=9)
    saved = state.state_dict()
    expected = torch.rand(3)
    other = TrainState(model, state.optimizer, torch.device("cpu"))
    other.load_state_dict(saved)
    assert (other.step, other.tokens_seen) == (3, 9) and torch.equal(torch.rand(3), expected)
    assert other.elapsed_s >= saved["elapsed_s"]


def test_report_gives_both_label_efficiencies(tmp_path):
    """Against scratch given the same recipe (what pretraining buys) and against plain supervised
    scratch (what headstart buys in all), each said to be which."""
    values = {"scratch": {100: 0.5, 1000: 0.8}, "supervised": {100: 0.4, 1000: 0.6}, "semi": {100: 0.6, 1000: 0.85}}
    lines = [
        json.dumps({"init": init, "budget": budget, "seed": seed, "metric": "accuracy", "value": value + seed / 100,
                    "accuracy": value + seed / 100,
                    "task": "toy", "sweep_flops": 1.0, "chosen": "lr", "run": ""})
        for init, by_budget in values.items() for budget, value in by_budget.items() for seed in range(3)
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    config = StudyConfig(inits={"scratch": "scratch", "supervised": "scratch", "semi": "scratch"},
                         supervised="supervised", budgets=[100, 1000])  # fmt: skip
    report = write_report(tmp_path, config, "", references=None).read_text()
    assert "what pretraining buys" in report and "what headstart buys a user in all" in report
    rows = [line for line in report.splitlines() if line.startswith("| semi |")]
    # the metric, one row per label efficiency, then the compute and choice tables
    assert rows[1] == "| semi | 2.2× | ≥ 1.0× |"  # scratch reaches semi's 100-label 0.61 at about 220 labels
    assert rows[2] == "| semi | 10.0× | ≥ 1.0× |"  # plain supervised needs 1,000; never reaches semi's 0.86
    # scratch given the plain recipe is itself the supervised baseline: one table, said to be both
    same = write_report(tmp_path, replace(config, supervised="scratch"), "", references=None).read_text()
    assert "the table above is both label efficiencies" in same


def scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, pytest.approx(event.value)) for event in events.Scalars(tag)]


def test_tensorboard_shows_the_run_and_a_resume_replaces_what_came_after_its_checkpoint(tiny_shards, tmp_path):
    pytest.importorskip("tensorboard")
    settings = ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.keep_checkpoints=0"]
    pretrain(tiny_shards, tmp_path, "board", *settings)
    shutil.rmtree(tmp_path / "board" / "checkpoints" / "step_00000006")  # as if killed before its last checkpoint
    pretrain(tiny_shards, tmp_path, "board", *settings, resume=True)  # steps 4-6 again: once each on the board
    records = [json.loads(line) for line in (tmp_path / "board" / "metrics.jsonl").read_text().splitlines()]
    assert scalars(tmp_path / "board", "train/loss") == [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert scalars(tmp_path / "board", "val/val_loss") == [
        (r["step"], r["val_loss"]) for r in records if "val_loss" in r
    ]
