import math

import pytest
import torch
from safetensors.torch import save_file

from headstart.config import ModelConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import CPU_FLOAT32_ATTENTION_MAX, SIZES, Transformer, attend, mlp_hidden
from headstart.train.checkpoint import load_weights
from headstart.train.flops import matmul_params, measure_peak_flops, train_flops_per_token


def tiny(**kw):
    return ModelConfig(**{"vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 32, "context": 16, **kw})


def test_decoder_is_causal_encoder_is_not():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 50
    for causal in (True, False):
        model = Transformer(tiny(causal=causal)).eval()
        a, b = model(ids), model(changed)
        prefix_same = torch.allclose(a[0, :7], b[0, :7], atol=1e-6)
        assert prefix_same == causal


def test_padding_mask_hides_padded_keys():
    torch.manual_seed(0)
    model = Transformer(tiny(causal=False)).eval()
    ids = torch.randint(0, 50, (1, 8))
    mask = torch.tensor([[True] * 5 + [False] * 3])
    other = ids.clone()
    other[0, 5:] = 0
    assert torch.allclose(model(ids, mask)[0, :5], model(other, mask)[0, :5], atol=1e-6)


def test_init_scales_residual_projections_and_ties_embeddings():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=1000, n_layer=8, n_head=4, n_embd=256, context=32))
    proj = model.blocks[0].attn.proj.weight.std().item()
    qkv = model.blocks[0].attn.qkv.weight.std().item()
    assert qkv == pytest.approx(0.02, rel=0.05)
    assert proj == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.lm_head is None
    hidden = torch.randn(2, 256)
    assert torch.equal(model.logits(hidden), hidden @ model.embed.weight.T)


def test_swiglu_and_gelu_have_the_same_parameter_count_and_flops_match_params():
    a = Transformer(tiny(mlp="swiglu", n_embd=192, n_head=6))
    b = Transformer(tiny(mlp="gelu", n_embd=192, n_head=6))
    assert abs(a.num_params() - b.num_params()) / b.num_params() < 0.02
    for config in (tiny(), tiny(mlp="gelu")):
        model = Transformer(config)
        norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
        assert matmul_params(config) == model.num_params(embedding=False) - norms
    assert mlp_hidden(tiny(mlp="gelu")) == 128


def test_named_sizes_up_to_gpt2_small():
    config = ModelConfig(size="gpt2-small", vocab_size=50257, context=1024)
    with torch.device("meta"):
        model = Transformer(config)
    assert 120e6 < model.num_params() < 130e6
    assert set(SIZES) >= {"nano", "micro", "tiny", "gpt2-small"}
    # 6N + attention, per token, for training
    assert train_flops_per_token(config, 1024) > 6 * 85e6


def test_context_too_long_and_bad_shapes_fail_clearly():
    model = Transformer(tiny())
    with pytest.raises(HeadstartError, match="longer than the model's context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(HeadstartError, match="multiple of n_head"):
        Transformer(tiny(n_embd=30, n_head=4))
    with pytest.raises(HeadstartError, match=r"model\.size"):
        Transformer(tiny(size="huge"))


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = Transformer(tiny())
    ids = torch.randint(0, 50, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.logits(model(ids)).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_measuring_the_peak_leaves_the_global_random_stream_alone():
    # A fresh machine measures its peak inside the first run: that must not shift the run's dropout masks.
    before = torch.get_rng_state()
    assert measure_peak_flops(torch.float32, torch.device("cpu"), size=64, repeats=1) > 0
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("length", [16, CPU_FLOAT32_ATTENTION_MAX // 8 + 1])
def test_short_bf16_attention_on_cpu_runs_in_float32_and_returns_bf16(length):
    """Short sequences take the float32 kernel (faster there); long ones stay in bf16; both
    agree with float32 attention to bf16 rounding, with the padding mask and causality."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, length, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, length, dtype=torch.bool)
    mask[1, ..., length // 2 :] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, k, v, mask, 0.0, False)
        causal = attend(q, k, v, None, 0.0, True)
    assert y.dtype == causal.dtype == torch.bfloat16
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    want_causal = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.allclose(y.float(), want, atol=2e-2) and torch.allclose(causal.float(), want_causal, atol=2e-2)
    (y.float().sum() + causal.float().sum()).backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


def test_qk_norm_gives_every_head_unit_rms_queries_and_keys():
    torch.manual_seed(0)
    model = Transformer(tiny(qk_norm=True))
    seen = {}
    attention = model.blocks[0].attn
    attention.q_norm.register_forward_hook(lambda _m, _i, out: seen.setdefault("q", out))
    attention.k_norm.register_forward_hook(lambda _m, _i, out: seen.setdefault("k", out))
    model(torch.randint(0, 50, (2, 10))).sum().backward()
    for name in ("q", "k"):
        rms = seen[name].pow(2).mean(-1).sqrt()
        assert seen[name].shape == (2, 10, 2, 16)  # (batch, length, heads, head_dim)
        assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)
    assert attention.q_norm.weight.grad is not None
    plain = Transformer(tiny())
    assert model.num_params() - plain.num_params() == 2 * 2 * 16  # two gains of head_dim per block


def test_a_checkpoint_in_the_earlier_weight_layout_loads_as_the_same_model(tmp_path):
    """Rows stored (q | k | v) and (gate | up), with no layout in the metadata, are reordered on
    load into head-by-head and unit-by-unit: the same function as before."""
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, context=16, qk_norm=True))
    earlier = {}
    for name, weight in model.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            weight = weight.view(2, 3, 8, 16).transpose(0, 1).reshape(weight.shape)
        elif name.endswith("mlp.up.weight"):
            weight = weight.view(-1, 2, 16).transpose(0, 1).reshape(weight.shape)
        earlier[name] = weight.contiguous()
    save_file(earlier, str(tmp_path / "model.safetensors"))
    loaded = Transformer(model.config)
    load_weights(tmp_path, loaded)
    ids = torch.randint(0, 50, (2, 16))
    assert torch.equal(loaded(ids), model(ids))
    assert not torch.equal(loaded.blocks[0].attn.qkv.weight, earlier["blocks.0.attn.qkv.weight"])
