import math

import numpy as np
import torch

from headstart.config import AugmentConfig, VisionConfig
from headstart.data.augment import build_views
from headstart.models.pretraining import ContrastiveModel
from headstart.models.vision import build_vision
from headstart.objectives.contrastive import SimCLR, nt_xent
from tests.conftest import fit_one_batch


def test_nt_xent_matches_a_hand_computed_case():
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    second = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # same directions: scale must not matter
    loss, accuracy = nt_xent(first, second, temperature=1.0)
    # Each of the 4 rows: its pair at cosine 1, the two others at cosine 0.
    assert math.isclose(loss.item(), math.log((2 + math.e) / math.e), rel_tol=1e-6)
    assert accuracy.item() == 1.0
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # every pair orthogonal, a negative aligned
    loss, accuracy = nt_xent(first, swapped, temperature=0.5)
    # Row 0: positive cosine 0, negatives cosine 0 (row 1) and 1 (the other view of row 1).
    expected = -math.log(math.exp(0) / (math.exp(0) + math.exp(0) + math.exp(2)))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6) and accuracy.item() == 0.0


def test_simclr_batch_views_differ_and_loss_trains():
    torch.manual_seed(0)
    backbone = build_vision(VisionConfig(kind="resnet", channels=1, width=8, depth=1, image_size=16))
    model = ContrastiveModel(backbone, hidden=32, out=16)
    objective = SimCLR(build_views((16, 16), 1, AugmentConfig()), temperature=0.5)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 16, 16, 1), dtype=np.uint8))
    batch = objective.make_batch(images, torch.Generator().manual_seed(1))
    again = objective.make_batch(images, torch.Generator().manual_seed(1))
    assert batch["first"].shape == (16, 1, 16, 16) and not torch.equal(batch["first"], batch["second"])
    assert torch.equal(batch["first"], again["first"])  # the step's generator decides the views
    losses, metrics = fit_one_batch(objective, model, batch, steps=15)
    assert losses[-1] < losses[0] - 0.5 and 0.0 <= metrics["pair_accuracy"].item() <= 1.0


def test_gradcache_gives_the_whole_batch_gradient_with_the_same_dropout_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 4))
    batch = {"first": torch.randn(8, 6), "second": torch.randn(8, 6)}
    objective = SimCLR(torch.nn.Identity(), temperature=0.5, chunk=3)

    torch.manual_seed(1)  # the reference: the same chunked forwards (same masks), one graph, one backward
    chunks = [torch.cat([model(piece) for piece in view.split(3)]) for view in (batch["first"], batch["second"])]
    reference_loss, _ = nt_xent(*chunks, temperature=0.5)
    (0.5 * reference_loss).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    torch.manual_seed(1)
    loss, metrics = objective.backward_loss(model, batch, scale=0.5)
    assert not loss.requires_grad and math.isclose(loss.item(), reference_loss.item(), rel_tol=1e-6)
    assert "pair_accuracy" in metrics
    for got, want in zip((p.grad for p in model.parameters()), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
