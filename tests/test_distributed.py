"""torchrun with two processes on CPU (gloo), DDP and FSDP2, against one process with the same
global batch: the same losses, and checkpoints that resume on the other number of ranks."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headstart import api
from headstart.config import ModelConfig, TrainConfig
from headstart.errors import HeadstartError
from headstart.models import build_backbone
from headstart.objectives.mlm import MaskedLM
from headstart.train import checkpoint as ckpt
from headstart.train import distributed
from headstart.train.checkpoint import load_pretrained
from headstart.train.distributed import Parallel
from headstart.train.flops import peak_cache_path

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.context=32", "train.seq_len=32",
        "train.batch_size=4", "train.grad_accum=2", "train.steps=20", "train.checkpoint_every=10",
        "train.eval_every=10", "train.eval_batches=2", "train.log_every=1", "train.precision=fp32",
        "schedule.warmup_steps=3", "optim.lr=3e-3", "embeddings.init=random", "run.out_dir=runs"]  # fmt: skip
TOLERANCE = 1e-5  # relative, on every logged loss


def overrides(shards: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, f"data.shards={shards}", f"run.name={name}", *extra]


def torchrun(cwd: Path, args: list[str]) -> None:
    """``headstart pretrain gpt-tiny ARGS`` on two CPU processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "headstart", "pretrain", "gpt-tiny", *args, "--quiet"]  # fmt: skip
    done = subprocess.run(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] if "loss" in r else r["val_loss"] for r in records]


def assert_same_losses(expected: list[float], got: list[float]) -> None:
    assert len(got) == len(expected) == 22  # 20 steps and 2 evaluations
    worst = max(abs(a - b) / abs(a) for a, b in zip(expected, got, strict=True))
    assert worst <= TOLERANCE, worst


def interrupted_copy(runs: Path, name: str, into: Path) -> Path:
    """A copy of run ``name`` as if it had stopped at step 10 (its later checkpoint removed)."""
    shutil.copytree(runs / "runs" / name, into / "runs" / name)
    shutil.rmtree(into / "runs" / name / "checkpoints" / "step_00000020")
    return into


PEAK = 2e10  # the per-device peak the ranks read from a seeded cache


def seed_peak(cache: Path, threads: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADSTART_CACHE", str(cache))
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            path = peak_cache_path(torch.float32, torch.device("cpu"))
        finally:
            torch.set_num_threads(before)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"flops": PEAK, "measured_at": time.time()}))


@pytest.fixture(scope="module")
def runs(tiny_shards, tmp_path_factory) -> Path:
    """One process, DDP and FSDP2 on two, each 20 steps of the same global batch, in ``runs/``."""
    root = tmp_path_factory.mktemp("distributed")
    seed_peak(root / "cache", threads=1)  # what each rank (OMP_NUM_THREADS=1) reads instead of probing
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADSTART_CACHE", str(root / "cache"))
        patch.chdir(root)
        api.pretrain("gpt-tiny", overrides(tiny_shards, "single"), quiet=True)
        torchrun(root, overrides(tiny_shards, "ddp", "train.parallel=ddp"))
        torchrun(root, overrides(tiny_shards, "fsdp", "train.parallel=fsdp"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_give_the_losses_of_one_process(runs, mode):
    single, spread = runs / "runs" / "single", runs / "runs" / mode
    assert_same_losses(losses(single), losses(spread))
    final = spread / "checkpoints" / "step_00000020"
    ckpt.verify(final)  # the shards are in the manifest too
    assert distributed.is_sharded(final) and "optimizer" not in ckpt.load_state(final)
    ends = [run / "checkpoints" / "step_00000020" for run in (single, spread)]
    compute = [json.loads((end / "compute.json").read_text()) for end in ends]
    assert compute[0]["tokens"] == compute[1]["tokens"] == 20 * 8 * 32  # every rank's tokens counted
    assert compute[0]["flops"] == compute[1]["flops"]
    one, whole = (load_file(str(end / "model.safetensors")) for end in ends)
    assert one.keys() == whole.keys()
    for name in one:
        torch.testing.assert_close(whole[name], one[name], rtol=1e-4, atol=1e-5)
    load_pretrained(final)  # the consolidated weights read as any checkpoint's


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_report_mfu_against_both_devices(runs, mode):
    """tokens/s counts the whole global batch, so MFU divides by the peak of both ranks' devices."""
    run_dir = runs / "runs" / mode
    flops_per_token = json.loads((run_dir / "checkpoints" / "step_00000020" / "compute.json").read_text())[
        "flops_per_token"
    ]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "mfu" in r]
    assert len(logged) == 20
    for record in logged:
        assert record["mfu"] == pytest.approx(record["tokens_per_s"] * flops_per_token / (2 * PEAK))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_two_rank_checkpoint_resumes_on_one_process(runs, mode, tmp_path, tiny_shards, monkeypatch):
    monkeypatch.chdir(interrupted_copy(runs, mode, tmp_path))
    resumed = api.pretrain("gpt-tiny", overrides(tiny_shards, mode), resume=True, quiet=True)
    assert resumed.step == 20
    continued = losses(tmp_path / "runs" / mode)
    assert_same_losses(losses(runs / "runs" / mode), continued)
    assert_same_losses(losses(runs / "runs" / "single"), continued)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_ranks(runs, tmp_path, tiny_shards):
    args = [*overrides(tiny_shards, "single", "train.parallel=fsdp"), "--resume"]
    torchrun(interrupted_copy(runs, "single", tmp_path), args)
    assert_same_losses(losses(runs / "runs" / "single"), losses(tmp_path / "runs" / "single"))


def test_the_masked_lm_loss_splits_into_the_global_mean():
    """Each rank's mean over its own masked positions, weighted by its share of them, averages to
    the mean over the whole batch: the gradient of one process."""
    torch.manual_seed(0)
    model = build_backbone(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, context=16, causal=False))
    objective = MaskedLM(vocab_size=50, mask_id=1, special_ids=[0, 1], mask_prob=0.3)
    full = objective.make_batch(torch.randint(2, 50, (4, 17)), torch.Generator().manual_seed(3))
    ranks = [Parallel("ddp", rank, 2) for rank in range(2)]
    parts = [ranks[r].rows(full) for r in range(2)]
    assert torch.equal(torch.cat([p["selected"] for p in parts]), full["selected"])
    assert parts[0]["selected"].sum() != parts[1]["selected"].sum()  # a share that needs weighing
    weighted = [objective.loss(model, part)[0] * ranks[r].weight(objective, full, part) for r, part in enumerate(parts)]
    torch.testing.assert_close(sum(weighted) / 2, objective.loss(model, full)[0])


def test_what_distributed_training_refuses(monkeypatch, tiny_shards, tmp_path):
    with pytest.raises(HeadstartError, match="torchrun"):
        distributed.start(TrainConfig(parallel="fsdp"), torch.device("cpu"))
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(HeadstartError, match="split evenly over 2 model copies"):
        distributed.start(TrainConfig(batch_size=5), torch.device("cpu"))
    with pytest.raises(HeadstartError, match="started 2 processes"):
        distributed.start(TrainConfig(parallel="none"), torch.device("cpu"))
    simclr = type("SimCLR", (), {"name": "simclr", "couples_batch": True})()
    with pytest.raises(HeadstartError, match="whole batch"):
        Parallel("ddp", 0, 2).refuse_coupled(simclr)
    with pytest.raises(HeadstartError, match="fine-tuning runs in one process"):
        api.finetune("sst2", [f"run.out_dir={tmp_path}"])
    with pytest.raises(HeadstartError, match="times one process"):
        api.pretrain("gpt-tiny", [f"data.shards={tiny_shards}"], minutes=1)
    assert not torch.distributed.is_initialized()  # refused before anything started
