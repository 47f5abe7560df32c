"""Tensor parallelism and 2-D (TP inside, FSDP2 across) on CPU processes (gloo): the split model
against the whole one (weights, loss, gradients, a step), 20 training steps against one
process, checkpoints that resume on other layouts, and a model built on the meta device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headstart import api
from headstart.config import ModelConfig, TrainConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import Transformer
from headstart.train import distributed, tensor_parallel
from headstart.train.checkpoint import load_pretrained
from tests.test_distributed import interrupted_copy, losses, overrides, seed_peak

TOLERANCE = 1e-4  # relative, on every logged loss: the split sums run in another order
CHECK = Path(__file__).with_name("tensor_parallel_check.py")


def torchrun(cwd: Path, processes: int, args: list[str], extra_env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def pretrain(cwd: Path, processes: int, args: list[str]) -> None:
    torchrun(cwd, processes, ["-m", "headstart", "pretrain", "gpt-tiny", *args, "--quiet"])


def assert_close_losses(expected: list[float], got: list[float]) -> None:
    assert len(got) == len(expected) == 22  # 20 steps and 2 evaluations
    worst = max(abs(a - b) / abs(a) for a, b in zip(expected, got, strict=True))
    assert worst <= TOLERANCE, worst


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_the_split_model_computes_what_the_whole_one_does(processes, tmp_path):
    """TP over 2 ranks, and 2 × 2 (TP inside, FSDP2 across): initial weights built on the meta
    device, loss, vocabulary argmax, gradients, gradient norm and one Muon step."""
    torchrun(tmp_path, processes, [str(CHECK)], {"TP_RANKS": "2", "PYTHONPATH": str(CHECK.parent.parent)})


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tp", "fsdp"])
def test_a_model_larger_than_the_memory_cap_starts_split_and_not_whole(mode, tmp_path):
    """Each of 2 ranks under an address-space cap of 3/4 of the model's weights: built on the meta
    device and laid out, its shards get memory and their initial weights; built whole, it fails."""
    env = {"MEMORY_CAP": mode, "PYTHONPATH": str(CHECK.parent.parent)}
    torchrun(tmp_path, 2, [str(CHECK)], env)


@pytest.fixture(scope="module")
def runs(tiny_shards, tmp_path_factory) -> Path:
    """20 steps of the same global batch: one process, TP 2, 2-D (2 × 2) and FSDP2 on 4 ranks; one
    process and TP 2 from skip-gram embeddings."""
    root = tmp_path_factory.mktemp("tensor_parallel")
    seed_peak(root / "cache", threads=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADSTART_CACHE", str(root / "cache"))
        patch.chdir(root)
        api.pretrain("gpt-tiny", overrides(tiny_shards, "single"), quiet=True)
        pretrain(root, 2, overrides(tiny_shards, "tp", "train.parallel=tp"))
        pretrain(root, 4, overrides(tiny_shards, "2d", "train.parallel=tp", "train.tp=2"))
        pretrain(root, 4, overrides(tiny_shards, "fsdp4", "train.parallel=fsdp"))
        skipgram = ["embeddings.init=skipgram", "embeddings.epochs=1"]
        api.pretrain("gpt-tiny", overrides(tiny_shards, "single-skipgram", *skipgram), quiet=True)
        pretrain(root, 2, overrides(tiny_shards, "tp-skipgram", *skipgram, "train.parallel=tp"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp", "2d", "fsdp4"])
def test_twenty_steps_follow_one_process(runs, layout):
    run = runs / "runs" / layout
    assert_close_losses(losses(runs / "runs" / "single"), losses(run))
    final = run / "checkpoints" / "step_00000020"
    assert distributed.is_sharded(final)
    compute = json.loads((final / "compute.json").read_text())
    assert compute["tokens"] == 20 * 8 * 32  # the global batch, counted once per model copy
    whole = load_pretrained(final)[0]  # the consolidated weights, as one process reads them
    single = load_pretrained(runs / "runs" / "single" / "checkpoints" / "step_00000020")[0]
    for (name, a), (_, b) in zip(single.named_parameters(), whole.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
def test_a_skipgram_warm_start_reaches_the_shards_of_a_model_built_on_the_meta_device(runs):
    assert_close_losses(losses(runs / "runs" / "single-skipgram"), losses(runs / "runs" / "tp-skipgram"))
    assert losses(runs / "runs" / "single-skipgram")[0] != losses(runs / "runs" / "single")[0]  # it did start elsewhere


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "processes", "settings"), [
    ("tp", 1, []),                                         # TP 2 → one process
    ("fsdp4", 4, ["train.parallel=tp", "train.tp=2"]),      # FSDP2 4 → TP 2 × FSDP2 2
    ("single", 2, ["train.parallel=tp"]),                   # one process → TP 2
])  # fmt: skip
def test_a_checkpoint_resumes_on_another_layout(runs, layout, processes, settings, tmp_path, tiny_shards):
    args = [*overrides(tiny_shards, layout, *settings), "--resume"]
    interrupted_copy(runs, layout, tmp_path)
    if processes == 1:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            assert api.pretrain("gpt-tiny", args[:-1], resume=True, quiet=True).step == 20
    else:
        pretrain(tmp_path, processes, args)
    assert_close_losses(losses(runs / "runs" / layout), losses(tmp_path / "runs" / layout))


def test_what_tensor_parallelism_refuses(monkeypatch):
    config = ModelConfig(vocab_size=64, n_layer=1, n_head=3, n_embd=48, context=16, mlp_hidden=96)
    with pytest.raises(HeadstartError, match=r"model\.n_head"):
        tensor_parallel.check(Transformer(config), "clm", 2, 16)
    with pytest.raises(HeadstartError, match=r"train\.seq_len"):
        tensor_parallel.check(Transformer(config), "clm", 3, 16)
    with pytest.raises(HeadstartError, match=r"objective\.name=simcse"):
        tensor_parallel.check(Transformer(config), "simcse", 3, 15)
    with pytest.raises(HeadstartError, match="not Sequential"):
        tensor_parallel.check(torch.nn.Sequential(), "clm", 2, 16)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(HeadstartError, match="divisor of the 4 ranks"):
        distributed.start(TrainConfig(parallel="tp", tp=3), torch.device("cpu"))
    with pytest.raises(HeadstartError, match="over 2 model copies"):
        distributed.start(TrainConfig(parallel="tp", tp=2, batch_size=5), torch.device("cpu"))
    assert not torch.distributed.is_initialized()
