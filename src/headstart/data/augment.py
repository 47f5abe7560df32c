"""Batched, seeded image augmentations on tensors (kornia): the random views that contrastive
pretraining compares, and light augmentation for fine-tuning.

Images travel as uint8 (N, H, W, C) arrays (:mod:`headstart.data.images`) and become float
(N, C, H, W) in [0, 1] here, on whatever device the batch is on. Every call takes a seed, so a
resumed run draws the same views as an uninterrupted one.
"""

from __future__ import annotations

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from headstart.config import AugmentConfig


def to_float(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [0, 1]."""
    batch = torch.as_tensor(images, device=device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def build_views(size: tuple[int, int], channels: int, config: AugmentConfig) -> nn.Module:
    """One random view per image, every image drawing its own parameters."""
    steps: list[nn.Module] = [K.RandomResizedCrop(size, scale=(config.crop_min, 1.0))]
    if config.flip:
        steps.append(K.RandomHorizontalFlip())
    if config.jitter > 0:
        saturation = config.jitter if channels == 3 else 0.0
        steps.append(K.ColorJitter(config.jitter, config.jitter, saturation, 0.0, p=config.jitter_p))
    if config.blur_p > 0:
        kernel = max(3, (size[0] // 10) | 1)  # about a tenth of the side, odd, as in SimCLR
        steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=config.blur_p))
    return K.AugmentationSequential(*steps)


def augment(views: nn.Module, batch: torch.Tensor, seed: int) -> torch.Tensor:
    """``views`` applied to a float (N, C, H, W) batch with its randomness drawn from ``seed``,
    leaving the global RNG as it was."""
    devices = [batch.device] if batch.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return views(batch).clamp_(0.0, 1.0)
