"""headstart plan: the analytic FLOPs against torch's counter, Chinchilla's arithmetic, the
memory estimate, the calibration, and the command line."""

import contextlib
import json
import math
from dataclasses import replace

import pytest
import torch

from headstart import api
from headstart.cli import main
from headstart.config import ModelConfig, ObjectiveConfig, PretrainConfig, TrainConfig
from headstart.data.shards import open_shards
from headstart.data.tokenizers import tokenizer_info
from headstart.errors import HeadstartError
from headstart.layouts import choose
from headstart.models.transformer import Transformer
from headstart.objectives.clm import CausalLM
from headstart.objectives.mlm import MaskedLM
from headstart.objectives.registry import build_model, build_objective
from headstart.plan import (
    Timing,
    chinchilla_tokens,
    compute_optimal_params,
    count_params,
    memory_needed,
    nearest_shape,
    parse_amount,
    plan,
    stand_in,
    word_tokenizer,
)
from headstart.train.flops import counted_flops, matmul_params, train_flops_per_token
from headstart.workflows.pretrain_data import resolve_config

CPU = torch.device("cpu")
FAST = ["train.seq_len=32", "train.batch_size=4", "train.precision=fp32"]


@pytest.mark.parametrize("seq_len", [16, 64])
@pytest.mark.parametrize(("objective", "mlp"), [("clm", "swiglu"), ("clm", "gelu"), ("mlm", "swiglu")])
def test_training_flops_match_the_flop_counter(objective, mlp, seq_len):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, n_layer=2, n_head=2, n_embd=32, context=64, mlp=mlp, causal=objective == "clm")
    task = CausalLM() if objective == "clm" else MaskedLM(300, mask_id=2, special_ids=range(6), mask_prob=0.3)
    batch = task.make_batch(torch.randint(6, 300, (3, seq_len + 1)), torch.Generator().manual_seed(0))
    scored = 1.0 if objective == "clm" else batch["selected"].float().mean().item()  # masked LM: masked tokens only
    analytic = train_flops_per_token(config, seq_len, scored) * task.tokens(batch)
    model = Transformer(config)
    counted = counted_flops(lambda: task.loss(model, batch)[0].backward())
    assert analytic == pytest.approx(counted, rel=0.03)


def test_amounts_parse_with_suffixes():
    assert parse_amount("10M", "--params") == 1e7
    assert parse_amount("1.5B", "--params") == 1.5e9
    assert parse_amount("500k", "--params") == 5e5
    assert parse_amount("1e15", "--flops") == 1e15
    assert parse_amount("3P", "--flops") == 3e15
    for bad in ("ten", "0", "-1M", "10X", "", "nan"):
        with pytest.raises(HeadstartError, match="--params"):
            parse_amount(bad, "--params")


def test_chinchilla_arithmetic():
    assert chinchilla_tokens(10e6) == 200e6
    assert chinchilla_tokens(124e6) == pytest.approx(2.48e9)
    assert compute_optimal_params(6 * 20 * (10e6) ** 2) == pytest.approx(10e6)  # C = 6·N·(20·N)
    assert compute_optimal_params(1.2e18) == pytest.approx(1e8)


def test_nearest_shape_prefers_a_named_size_and_lands_near_the_count():
    base = ModelConfig(vocab_size=1)
    tiny = replace(base, n_layer=6, n_head=6, n_embd=192)
    chosen = nearest_shape(base, matmul_params(tiny))
    assert (chosen.n_layer, chosen.n_head, chosen.n_embd) == (6, 6, 192)  # the preset, not 6 × 192 with 3 heads
    for target in (1e6, 10e6, 124e6):
        assert matmul_params(nearest_shape(base, target)) == pytest.approx(target, rel=0.15)


@pytest.fixture
def fixed_speed(monkeypatch):
    """Plans without timing: 1,000 tokens a second at 40% MFU."""
    monkeypatch.setattr("headstart.plan.time_training", lambda *args: Timing(1000.0, 0.4, "fixed"))


def test_params_plan_chinchilla_tokens(fixed_speed):
    result = plan(params="10M", overrides=FAST)
    assert result.non_embedding_params == pytest.approx(10e6, rel=0.03)
    assert result.chinchilla_tokens == round(20 * result.non_embedding_params)
    assert result.tokens_per_step == 4 * 32
    assert result.steps == math.ceil(result.chinchilla_tokens / 128)
    assert result.flops == pytest.approx(result.tokens * result.flops_per_token)
    assert result.seconds == pytest.approx(result.tokens / 1000.0)
    assert "model.n_embd=" in " ".join(result.overrides) and result.overrides[-1] == f"train.steps={result.steps}"


def test_flops_budget_plans_the_compute_optimal_model(fixed_speed):
    budget = 6 * 20 * (3e6) ** 2
    result = plan(flops=budget, overrides=FAST)
    assert result.optimal_params == pytest.approx(3e6)
    assert result.non_embedding_params == pytest.approx(3e6, rel=0.1)
    assert budget - result.tokens_per_step * result.flops_per_token < result.flops <= budget  # whole steps, within it


def test_minutes_budget_keeps_the_recipes_model(fixed_speed):
    result = plan(minutes=2, overrides=FAST)
    assert "6 layers × 192 wide" in result.model  # gpt-tiny
    assert result.steps == 120 * 1000 // 128
    assert result.optimal_params == pytest.approx(compute_optimal_params(120 * 1000 * result.flops_per_token))
    with pytest.raises(HeadstartError, match="one budget"):
        plan(flops=1e15, minutes=2)
    with pytest.raises(HeadstartError, match="chooses the shape"):
        plan(params="1M", overrides=["model.n_layer=3"])


def tiny_config(objective: str, mlp: str = "swiglu") -> PretrainConfig:
    config = PretrainConfig(
        model=ModelConfig(vocab_size=512, n_layer=2, n_head=2, n_embd=64, context=32, mlp=mlp),
        objective=ObjectiveConfig(name=objective),
        train=TrainConfig(batch_size=4, seq_len=32),
    )
    return resolve_config(replace(config, data=replace(config.data, shards="x")), tokenizer_info(word_tokenizer(512)))


def test_memory_matches_a_hand_computation():
    config = tiny_config("clm")
    params = count_params(config)[0]
    # embedding 512·64, per layer 4·64² attention + 3·64·192 SwiGLU, norm gains (2·2 + 1)·64
    assert params == 512 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 192) + 5 * 64 == 139_584
    fp32 = memory_needed(config, params, torch.float32, CPU)
    assert (fp32["weights"], fp32["gradients"], fp32["optimizer"]) == (4 * params, 4 * params, 8 * params)
    per_token = 2 * (48 * 64 + 16 * 192) + 12 * 64 + 4 * 512  # layers, outside them, the logits
    assert fp32["activations"] == 4 * 32 * per_token == 1_933_312
    assert fp32["total"] == 16 * params + 1_933_312
    bf16 = memory_needed(config, params, torch.bfloat16, torch.device("cuda"))
    per_token = 2 * (32 * 64 + 8 * 192) + 10 * 64 + 4 * 512
    assert bf16["activations"] == 4 * 32 * per_token + 2 * params
    # on a CPU this short attention runs in float32 and keeps 6 bytes more per n_embd and layer
    cpu = memory_needed(config, params, torch.bfloat16, CPU)
    assert cpu["activations"] == bf16["activations"] + 4 * 32 * 2 * 6 * 64
    # Muon: one momentum for the blocks' matrices instead of AdamW's two moments
    muon = replace(config, optim=replace(config.optim, name="muon"))
    hidden = 2 * (4 * 64 * 64 + 3 * 64 * 192)
    assert memory_needed(muon, params, torch.float32, CPU)["optimizer"] == 8 * params - 4 * hidden


def test_layouts_divide_what_they_shard_and_the_first_that_fits_is_chosen(fixed_speed):
    config = tiny_config("clm")
    config = replace(config, model=replace(config.model, n_head=4))
    params, per_token = count_params(config)[0], 2 * (48 * 64 + 16 * 192) + 12 * 64 + 4 * 512
    plans = {p.layout.name: p for p in choose(config, 4, 1e12, per_token, 8.0 * params, torch.float32)}
    assert list(plans) == ["DDP × 4", "FSDP2 × 4", "TP 2 × FSDP2 2", "TP 4"]  # least traffic first
    ddp, fsdp, two_d, tp = plans.values()
    logits = 8 * 512 * 32  # at the loss: logits and a gradient beside the kept log-softmax, for 32 tokens a copy
    assert ddp.memory["weights"] == 4 * params and ddp.memory["in_flight"] == 4 * params + logits  # + buckets
    assert ddp.memory["activations"] == 32 * per_token  # one row of 4 per copy
    assert fsdp.memory["weights"] == tp.memory["weights"] == two_d.memory["weights"] == params
    block, root = 4 * 64 * 64 + 3 * 64 * 192 + 2 * 64, 512 * 64 + 64
    assert fsdp.memory["in_flight"] == logits + 12 * block + 8 * root  # a block gathered, the next, the root
    assert tp.memory["in_flight"] == 8 * 512 * 128 / 4  # all 128 tokens, a quarter of the vocabulary each
    gathered = 2 * 2 * 64 * 4 * 128 * (1 - 1 / 4)  # two split-matrix inputs per block, kept whole
    assert tp.memory["activations"] == pytest.approx(128 * per_token / 4 + gathered)
    assert ddp.sent == 2 * 3 / 4 * 4 * params and fsdp.sent == 3 * 3 / 4 * 4 * params
    just_fits = fsdp.memory["total"] / 0.9  # at most 90% of a device's memory is planned
    assert [p.fits for p in choose(config, 4, just_fits, per_token, 8.0 * params, torch.float32)][:2] == [False, True]
    planned = plan(overrides=[*FAST, "model.n_head=4"], devices=4, device_memory="1GiB")
    assert planned.device_memory == 2**30 and planned.layouts[0]["layout"] == "DDP × 4"
    with pytest.raises(HeadstartError, match="give both"):
        plan(overrides=FAST, devices=4)
    with pytest.raises(HeadstartError, match="80GiB"):
        plan(overrides=FAST, devices=4, device_memory="lots")


def saved_bytes(config: PretrainConfig, dtype: torch.dtype) -> int:
    """Bytes of the tensors autograd keeps for one micro-batch's backward, parameters aside."""
    model, objective = build_model(config), build_objective(config, word_tokenizer(config.model.vocab_size))
    windows = torch.randint(6, config.model.vocab_size, (config.train.batch_size, config.train.seq_len + 1))
    batch = objective.make_batch(windows, torch.Generator().manual_seed(0))
    storages = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=dtype) if dtype == torch.bfloat16 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast:
        objective.loss(model, batch)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for pointer, size in storages.items() if pointer not in weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("objective", "mlp"), [("clm", "swiglu"), ("mlm", "gelu"), ("rtd", "swiglu")])
def test_activation_estimate_matches_what_autograd_keeps(objective, mlp, dtype):
    config = tiny_config(objective, mlp)
    estimate = memory_needed(config, count_params(config)[0], dtype, CPU)["activations"]
    assert estimate == pytest.approx(saved_bytes(config, dtype), rel=0.05)


def test_calibration_times_the_model_or_a_smaller_one(tiny_shards, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may be left behind
    overrides = [f"data.shards={tiny_shards}", *FAST, "model.n_layer=4", "model.n_head=2", "model.n_embd=32"]
    timed = plan(overrides=overrides, flops=1e9, calibration_steps=4)
    assert timed.timing.startswith("calibrated") and timed.tokens_per_s > 0 and 0 < timed.mfu < 1
    assert f"vocabulary {open_shards(tiny_shards).vocab_size:,}" in timed.model  # the shards' tokenizer
    standing_in = plan(overrides=overrides, flops=1e9, calibration_steps=4, calibration_seconds=1e-9)
    assert standing_in.timing.startswith("peak × MFU") and "1 layers × 16 wide" in standing_in.timing
    assert list(tmp_path.iterdir()) == []
    # the planned run records the FLOPs the plan predicted
    run = api.pretrain(
        timed.recipe, [*timed.overrides, "embeddings.init=random", f"run.out_dir={tmp_path}", "run.name=p"], quiet=True
    )
    compute = json.loads((run.checkpoint / "compute.json").read_text())
    assert compute["flops"] == pytest.approx(timed.flops)


def test_stand_in_shrinks_depth_then_batch_then_width_keeping_the_head_size():
    config = tiny_config("clm")
    config = replace(config, model=replace(config.model, n_layer=8, n_head=13, n_embd=13 * 64))
    smaller = stand_in(config, lambda c: c.model.n_head <= 6)
    assert (smaller.model.n_layer, smaller.train.batch_size, smaller.model.n_head) == (1, 1, 6)
    assert smaller.model.n_embd == 6 * 64 and count_params(smaller)[0] > 0  # still a valid shape
    assert stand_in(config, lambda c: True) is config


def test_cli_prints_a_table_and_writes_the_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["plan", "--params", "1M", "--minutes", "0.5", "--seq-len", "32", "--batch-size", "4"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--precision", "fp32", "--calibration-steps", "4", "--out", str(out)])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "planned tokens" in shown and "calibrated" in shown and "memory" in shown
    written = json.loads(out.read_text())
    assert written["steps"] > 0 and written["memory"]["total"] > 0 and written["timing"].startswith("calibrated")


def test_cli_takes_hours_overrides_and_writes_markdown(fixed_speed, tmp_path, capsys):
    out = tmp_path / "plan.md"
    with pytest.raises(SystemExit) as done:
        main(["plan", "bert-tiny", "model.n_layer=2", "--hours", "0.01", "--seq-len", "32", "--out", str(out)])
    assert done.value.code == 0
    assert "0:36 of training here" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# Plan") and "| run it | headstart pretrain bert-tiny model.n_layer=2" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--params", "ten"], "--params ten"),
        (["--params", "1M", "--out", "plan.txt"], ".json or .md"),
        (["--flops", "1e15", "--minutes", "3"], "one budget"),
    ],
)
def test_cli_bad_input_is_one_line(args, fragment, capsys):
    with pytest.raises(SystemExit) as done:
        main(["plan", *args])
    assert done.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in lines[0]


def test_plan_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    shown = capsys.readouterr().out
    assert "--params" in shown and "--flops" in shown and "--hours" in shown
