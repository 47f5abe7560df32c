import numpy as np
import pytest
import torch

from headstart.config import VisionConfig
from headstart.errors import HeadstartError
from headstart.models.pretraining import MaskedAutoencoder
from headstart.models.vision import build_vision
from headstart.objectives.mae import MAE
from tests.conftest import fit_one_batch


class FixedPrediction(torch.nn.Module):
    """Stands in for the MAE model with a given prediction, to see where the loss's gradient goes."""

    def __init__(self, backbone, predicted):
        super().__init__()
        self.backbone, self.predicted = backbone, predicted

    def forward(self, images, keep):
        return self.predicted


def tiny_mae():
    torch.manual_seed(0)
    vit = build_vision(VisionConfig(kind="vit", channels=1, image_size=8, patch=2, width=16, depth=1, n_head=2))
    return MaskedAutoencoder(vit, width=16, depth=1, n_head=2)


@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_mae_masks_the_stated_ratio_per_image(ratio):
    objective = MAE(n_patches=16, mask_ratio=ratio)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8))
    batch = objective.make_batch(images, torch.Generator().manual_seed(0))
    assert (batch["masked"].sum(1) == round(16 * ratio)).all()
    assert batch["keep"].shape == (6, round(16 * (1 - ratio)))
    assert not batch["masked"].gather(1, batch["keep"]).any()  # kept patches are exactly the unmasked ones
    assert len({tuple(k.tolist()) for k in batch["keep"]}) > 1  # each image draws its own mask
    with pytest.raises(HeadstartError, match=r"mask_ratio=1\.0"):
        MAE(16, mask_ratio=1.0)


def test_mae_loss_reads_only_masked_patches_and_trains():
    model, objective = tiny_mae(), MAE(n_patches=16, mask_ratio=0.75)
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8))
    batch = objective.make_batch(images, torch.Generator().manual_seed(0))
    # The loss is on masked patches only: no gradient reaches the prediction of a visible one.
    predicted = model(batch["images"], batch["keep"]).detach().requires_grad_(True)
    loss, _ = objective.loss(FixedPrediction(model.backbone, predicted), batch)
    loss.backward()
    visible = ~batch["masked"]
    assert predicted.grad[visible].abs().max() == 0 and predicted.grad[~visible].abs().max() > 0
    losses, _ = fit_one_batch(objective, model, batch, steps=20)
    assert losses[-1] < 0.8 * losses[0]


def test_mae_trains_under_bf16_autocast():
    """``precision=auto`` picks bf16 on CPUs with fast bf16 matmuls; the decoder's mask tokens must follow."""
    model, objective = tiny_mae(), MAE(n_patches=16, mask_ratio=0.75)
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8))
    batch = objective.make_batch(images, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = objective.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.mask_token.grad.abs().sum() > 0
