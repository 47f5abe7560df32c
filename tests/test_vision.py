import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from headstart.config import VisionConfig
from headstart.errors import HeadstartError
from headstart.models.vision import build_vision


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_resnet_pools_a_feature_map(pooling):
    model = build_vision(VisionConfig(kind="resnet", channels=3, image_size=16, width=8, depth=1, pooling=pooling))
    features = model(torch.rand(5, 3, 16, 16))
    assert features.shape == (5, 32) and model.feature_dim == 32
    with pytest.raises(HeadstartError, match="only the ViT has a class token"):
        build_vision(VisionConfig(kind="resnet", channels=1, image_size=28, width=8, depth=1, pooling="cls"))(
            torch.rand(1, 1, 28, 28)
        )


def test_vit_patches_in_raster_order_and_positions_follow_the_tokens():
    torch.manual_seed(0)
    model = build_vision(VisionConfig(kind="vit", channels=1, image_size=8, width=16, depth=2, patch=4, n_head=2))
    images = torch.arange(64.0).reshape(1, 1, 8, 8)
    patches = model.patchify(images)
    assert patches.shape == (1, 4, 16)
    assert patches[0, 1, :4].tolist() == [4.0, 5.0, 6.0, 7.0]  # top-right patch, its first row
    assert patches[0, 2, 0].item() == 32.0  # bottom-left patch starts at row 4
    batch = torch.rand(3, 1, 8, 8)
    tokens = model.patch_tokens(batch)
    full = model.encode(tokens)
    assert full.shape == (3, 5, 16) and model(batch).shape == (3, 16)
    # Shuffled tokens that keep their positions encode to the same vectors, shuffled alike.
    order = torch.tensor([2, 0, 3, 1])
    shuffled = model.encode(tokens[:, order], order.expand(3, 4))
    assert torch.allclose(shuffled[:, 1:], full[:, 1:][:, order], atol=1e-5)
    assert torch.allclose(shuffled[:, 0], full[:, 0], atol=1e-5)
    # A subset (what MAE's encoder sees) is a valid input too.
    assert model.encode(tokens[:, :2], torch.tensor([[1, 3]] * 3)).shape == (3, 3, 16)
    with pytest.raises(HeadstartError, match="this ViT takes 1×8×8"):
        model(torch.rand(1, 3, 8, 8))


def test_a_strided_stem_quarters_the_resnet_flops_and_keeps_the_features():
    flops = {}
    for stride in (1, 2):
        model = build_vision(
            VisionConfig(kind="resnet", channels=1, image_size=28, width=8, depth=1, stem_stride=stride)
        )
        with FlopCounterMode(display=False) as counter:
            features = model(torch.rand(2, 1, 28, 28))
        flops[stride] = counter.get_total_flops()
        assert features.shape == (2, 32)
    assert 0.2 < flops[2] / flops[1] < 0.3
