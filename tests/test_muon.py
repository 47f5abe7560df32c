import math

import pytest
import torch

from headstart.config import OptimConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import ModelConfig, Transformer
from headstart.train.muon import NEWTON_SCHULZ, RMS_MATCH, Muon, newton_schulz
from headstart.train.optim import build_optimizer, carried_state


def test_newton_schulz_maps_each_singular_value_by_the_quintic():
    values = [3.0, 1.0, 0.25]
    a, b, c = NEWTON_SCHULZ
    expected = [v / math.sqrt(sum(w * w for w in values)) for v in values]  # scaled by the Frobenius norm
    for _ in range(5):
        expected = [a * x + b * x**3 + c * x**5 for x in expected]
    out = newton_schulz(torch.diag(torch.tensor(values)))
    assert torch.allclose(out, torch.diag(torch.tensor(expected)), atol=1e-5)
    assert all(0.68 < x < 1.2 for x in expected)  # 12× apart before, within a factor 1.8 after


@pytest.mark.parametrize("shape", [(16, 48), (48, 16)])
def test_newton_schulz_orthogonalises_keeping_the_singular_vectors(shape):
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = newton_schulz(matrix)
    assert out.shape == matrix.shape
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.6 and singular.max() < 1.25
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    polar = u @ vh  # the exact orthogonalisation
    cosine = (out * polar).sum() / (out.norm() * polar.norm())
    assert cosine > 0.98


def test_a_muon_step_is_the_scaled_orthogonalised_nesterov_momentum():
    weight = torch.nn.Parameter(torch.randn(8, 24))
    start = weight.detach().clone()
    weight.grad = torch.randn(8, 24)
    optimizer = Muon([{"params": [weight], "muon": True, "weight_decay": 0.1}], lr=0.01, momentum=0.9)
    optimizer.step()
    # first step: buffer = g, Nesterov g + 0.9·buffer = 1.9·g, and the iteration is scale-free
    update = newton_schulz(weight.grad) * RMS_MATCH * math.sqrt(24)
    assert torch.allclose(weight.detach(), start * (1 - 0.01 * 0.1) - 0.01 * update, atol=1e-6)
    rms = (update.norm() / math.sqrt(update.numel())).item()
    assert 0.1 < rms < 0.3  # about AdamW's update RMS, so one lr serves both


def test_the_other_parameters_take_adamws_update():
    torch.manual_seed(0)
    ours, reference = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5, 3))
    reference.data.copy_(ours.data)
    muon = Muon([{"params": [ours], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.95))
    adamw = torch.optim.AdamW([reference], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(4):
        grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        ours.grad, reference.grad = grad.clone(), grad.clone()
        muon.step()
        adamw.step()
    assert torch.allclose(ours, reference, atol=1e-6)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, context=8))
    optimizer = build_optimizer(model, OptimConfig(name="muon"), torch.device("cpu"))
    names = {param: name for name, param in model.named_parameters()}
    orthogonalised = {names[p] for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert orthogonalised and all(".blocks." in f".{n}" and names_dim(model, n) == 2 for n in orthogonalised)
    assert "embed.weight" not in orthogonalised and not any("norm" in n for n in orthogonalised)
    hidden = {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    assert orthogonalised == hidden
    adamw = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    with pytest.raises(HeadstartError, match="init_optimizer=carry: run-a was trained with another optimizer"):
        carried_state(optimizer, adamw.state_dict(), "run-a")


def names_dim(model: torch.nn.Module, name: str) -> int:
    return dict(model.named_parameters())[name].dim()
