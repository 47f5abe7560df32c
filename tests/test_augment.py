import numpy as np
import pytest
import torch

from headstart.config import AugmentConfig
from headstart.data.augment import augment, build_views, to_float


@pytest.mark.parametrize("channels", [1, 3])
def test_views_keep_shape_and_range_and_are_seeded(channels):
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, channels), dtype=np.uint8)
    batch = to_float(images)
    assert batch.shape == (8, channels, 28, 28) and batch.dtype == torch.float32
    assert torch.equal(batch[3, :, 5, 7], torch.from_numpy(images[3, 5, 7]).float() / 255)
    views = build_views((28, 28), channels, AugmentConfig())
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b, c = augment(views, batch, 7), augment(views, batch, 7), augment(views, batch, 8)
    assert a.shape == batch.shape and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, batch)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global RNG stream is untouched by augment
    per_image = (a - batch).abs().flatten(1).mean(1)
    assert (per_image > 0).all()  # every image drew its own crop


def test_views_can_be_turned_down_to_crops_only():
    batch = to_float(np.full((2, 16, 16, 1), 200, dtype=np.uint8))
    views = build_views((16, 16), 1, AugmentConfig(crop_min=1.0, flip=False, jitter=0.0, blur_p=0.0))
    out = augment(views, batch, 0)
    assert torch.allclose(out, batch, atol=1e-5)  # a full-size crop of a flat image is the image
