import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.exc import InductorError
from torch.utils.flop_counter import FlopCounterMode

from headstart import api
from headstart.config import ModelConfig, OptimConfig, PretrainConfig, load_config, to_dict
from headstart.errors import HeadstartError
from headstart.models import build_backbone
from headstart.models.mamba import (
    _BACKWARD,
    _FORWARD,
    Mamba,
    _chunk_forward,
    _Kernel,
    selective_scan_chunked,
    selective_scan_reference,
)
from headstart.train import checkpoint as ckpt
from headstart.train.checkpoint import load_pretrained
from headstart.train.flops import SCAN_FLOPS, forward_flops_per_token
from headstart.train.optim import build_optimizer


def scan_inputs(batch: int, length: int, inner: int, state: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Random scan inputs at the model's scales: Δ around 0.05 (softplus of its init range), A = −exp(A_log)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, inner, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, length, inner, generator=g, dtype=dtype) - 3)
    A = -torch.exp(torch.rand(inner, state, generator=g, dtype=dtype) * 3)
    B, C = (torch.randn(batch, length, state, generator=g, dtype=dtype) for _ in range(2))
    D = torch.randn(inner, generator=g, dtype=dtype)
    return u, delta, A, B, C, D


def tiny(**fields) -> ModelConfig:
    return ModelConfig(**{"kind": "mamba", "vocab_size": 50, "n_layer": 2, "n_embd": 16, "context": 40, **fields})


@pytest.mark.parametrize(("chunk", "compiled"), [(1, False), (7, True), (10, False), (16, True), (64, False)])
def test_chunked_scan_matches_the_reference(chunk, compiled):
    inputs = [t.requires_grad_() for t in scan_inputs(2, 50, 8, 4)]  # 10 divides 50, the others pad; 64 > 50
    chunked = selective_scan_chunked(*inputs, chunk=chunk, compiled=compiled)
    reference = selective_scan_reference(*inputs)
    assert (chunked - reference).abs().max() <= 1e-5
    if compiled:  # it compiled here, not fell back to running op by op
        assert _FORWARD.compiled is not None and _BACKWARD.compiled is not None
    else:  # op by op, the chunk steps are the reference's operations
        assert torch.equal(chunked, reference)
    # Its backward pass is written out: every gradient against autograd through the reference.
    weights = torch.randn_like(reference)
    ours, theirs = (torch.autograd.grad(y, inputs, weights) for y in (chunked, reference))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("chunk", "compiled"), [(3, False), (4, True)])
def test_chunked_scan_gradients(chunk, compiled):
    inputs = tuple(t.requires_grad_() for t in scan_inputs(2, 6, 2, 3, dtype=torch.float64))  # 3 divides 6, 4 does not
    assert torch.autograd.gradcheck(lambda *a: selective_scan_chunked(*a, chunk=chunk, compiled=compiled), inputs)


def test_a_scan_kernel_that_fails_to_compile_runs_eagerly_after_one_warning():
    def no_compiler(*args):
        raise InductorError(RuntimeError("InvalidCxxCompiler: no working C++ compiler found"), None)

    kernel = _Kernel(_chunk_forward)
    kernel.compiled = no_compiler
    u, delta, A, B, C, _ = scan_inputs(3, 5, 4, 2)
    chunk = (torch.zeros(3, 4, 2), delta * u, delta, A, B, C)
    with pytest.warns(UserWarning, match="torch.compile failed .*no working C\\+\\+ compiler found.*eagerly"):
        y, h = kernel(True, *chunk)
    assert kernel.compiled is None
    expected_y, expected_h = _chunk_forward(*chunk)
    assert torch.equal(y, expected_y) and torch.equal(h, expected_h)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        kernel(True, *chunk)


def test_mamba_is_causal_and_ignores_right_padding():
    torch.manual_seed(0)
    model = Mamba(tiny(scan_chunk=8)).eval()
    idx = torch.randint(0, 50, (2, 30))
    changed = idx.clone()
    changed[:, 20] = (idx[:, 20] + 1) % 50
    with torch.no_grad():
        a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=1e-6)
        assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-3
        padded = torch.cat([idx, torch.zeros(2, 5, dtype=torch.long)], dim=1)
        mask = torch.arange(35)[None, :] < 30
        torch.testing.assert_close(model(padded, padding_mask=mask)[:, :30], a, rtol=0, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls, the scan in float32
            half = model(idx)
    assert (half.float() - a).abs().max() < 0.1 * a.abs().max()


def test_mamba_config_errors_and_what_it_ignores(tiny_shards, tmp_path):
    with pytest.raises(HeadstartError, match=r"model\.kind=mamba: a causal model only"):
        api.pretrain("bert-tiny", [f"data.shards={tiny_shards}", f"run.out_dir={tmp_path}", "model.kind=mamba"])
    with pytest.raises(HeadstartError, match=r"model\.size='tiny': named sizes are transformer shapes"):
        build_backbone(tiny(size="tiny"))
    model = build_backbone(tiny(n_embd=30, n_head=4))  # no heads: n_head is not read
    assert isinstance(model, Mamba) and model.config.dt_rank == 2


def test_a_log_is_not_weight_decayed():
    model = Mamba(tiny())
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    block = model.blocks[0].mixer
    assert decay_of[id(block.A_log)] == 0.0 and decay_of[id(block.in_proj.weight)] == 0.1


def test_flops_match_torch_counter_on_matmuls_and_convolution():
    config = Mamba(tiny()).config
    model = Mamba(config)
    tokens = 2 * 32
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.logits(model(torch.randint(0, 50, (2, 32))))
    counts = counter.get_flop_counts()["Global"]
    aten = torch.ops.aten
    counted = sum(counts.get(op, 0) for op in (aten.mm, aten.addmm, aten.convolution))
    inner = config.expand * config.n_embd
    scan = config.n_layer * SCAN_FLOPS * inner * config.d_state  # elementwise: the counter does not see it
    assert counted == (forward_flops_per_token(config, 32) - scan) * tokens


def test_mamba_tiny_matches_gpt_tiny_parameters():
    counts = {}
    for recipe in ("gpt-tiny", "mamba-tiny"):
        model = load_config(PretrainConfig, recipe, ["model.vocab_size=8192"]).model
        counts[recipe] = build_backbone(model).num_params()
    assert counts["mamba-tiny"] == pytest.approx(counts["gpt-tiny"], rel=0.05)


@pytest.fixture(scope="module")
def tiny_mamba(tiny_shards, tmp_path_factory):
    """A 2-layer Mamba pretrained through the real path (the causal objective, the one loop)."""
    out = tmp_path_factory.mktemp("mamba")
    overrides = [f"data.shards={tiny_shards}", f"run.out_dir={out}", "run.name=m", "model.n_layer=2",
                 "model.n_embd=32", "model.context=32", "model.scan_chunk=8", "train.seq_len=32",
                 "train.batch_size=4", "train.steps=40", "train.eval_every=20", "train.eval_batches=2",
                 "train.log_every=1", "train.precision=fp32", "schedule.warmup_steps=3", "optim.lr=3e-3",
                 "embeddings.init=random"]  # fmt: skip
    return api.pretrain("mamba-tiny", overrides, quiet=True), out / "m"


def test_tiny_mamba_pretrains_and_its_checkpoint_round_trips(tiny_mamba, tmp_path):
    result, run_dir = tiny_mamba
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < 0.75 * losses[0]
    model, config, _ = load_pretrained(result.checkpoint)
    assert isinstance(model, Mamba) and config.model.kind == "mamba" and config.model.dt_rank == 2
    torch.manual_seed(1)
    fresh = build_backbone(config.model).eval()  # other weights, saved and loaded back
    folder = ckpt.write_checkpoint(tmp_path / "checkpoints", 0, fresh, {"step": 0}, to_dict(config))
    loaded, _, _ = load_pretrained(folder)
    idx = torch.randint(0, config.model.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.equal(loaded.logits(loaded(idx)), fresh.logits(fresh(idx)))
        assert not torch.equal(model(idx), fresh(idx))


def test_tiny_mamba_finetunes(tiny_mamba, tmp_path, write_task):
    train, dev = write_task(tmp_path / "train.jsonl", 300, 0), write_task(tmp_path / "dev.jsonl", 100, 1)
    overrides = [f"init={tiny_mamba[0].checkpoint}", f"task.train={train}", f"task.eval={dev}", "task.max_len=16",
                 f"run.out_dir={tmp_path}", "budget=200", "train.steps=60", "train.eval_every=20",
                 "train.precision=fp32", "optim.lr=3e-3", "layer_decay=0.8"]  # fmt: skip
    result = api.finetune("sst2", overrides, quiet=True)
    assert result.metrics["accuracy"] > 0.8 and result.flops > 0
