"""Image classification (Fashion-MNIST, MedMNIST, an image folder): a vision backbone's pooled
features and a linear head; reported as accuracy, macro-F1 and ROC AUC (what medical imaging
reports). Images stay uint8 until a batch is made; training can add seeded random crops and
flips (``task.crop_min`` / ``task.flip``), which every init in a study gets alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tokenizers import Tokenizer
from torch import nn

from headstart.config import AugmentConfig, TaskConfig
from headstart.data.augment import build_views, to_float
from headstart.data.images import ImageSet, read_images
from headstart.errors import HeadstartError
from headstart.models.heads import head_logits
from headstart.objectives.classify import ImageClassify, accuracy_and_macro_f1

TRACKED_IMAGES = 2000  # scored at each evaluation while training; the final score uses every image


@dataclass
class EncodedImages:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # (N,) int64


class ImageClassifier(nn.Module):
    """A vision backbone (which pools as its checkpoint's ``vision.pooling`` says) and a linear head."""

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, n_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


@torch.no_grad()
def image_features(backbone: nn.Module, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Pooled features (N, D), float32 on the CPU, of uint8 (N, H, W, C) images; the backbone
    runs in eval mode (batch-norm statistics and dropout frozen) and gets its mode back."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    try:
        chunks = [
            backbone(to_float(images[i : i + batch_size], device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        backbone.train(was_training)
    return torch.cat(chunks)


def roc_auc(logits: torch.Tensor, labels: np.ndarray) -> float:
    """ROC AUC of the predicted class probabilities: of the positive class for two classes,
    else the unweighted mean over one-vs-rest; NaN when the set holds a single class."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    probabilities = logits.float().softmax(-1).numpy()
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    present = np.unique(labels)
    return float(np.mean([roc_auc_score(labels == c, probabilities[:, c]) for c in present]))


class ImageClassifyTask:
    metric = "accuracy"
    track_eval = True

    def __init__(self, config: TaskConfig, tokenizer: Tokenizer | None = None) -> None:
        self.config = config
        augmented = config.crop_min < 1.0 or config.flip
        self._augment = AugmentConfig(config.crop_min, config.flip, jitter=0.0, blur_p=0.0) if augmented else None
        self.objective: ImageClassify | None = None
        self.train: ImageSet | None = None
        self.eval: ImageSet | None = None

    def read(self) -> None:
        c = self.config
        self.train = read_images(c.train, c.train_split)
        self.eval = read_images(c.eval or c.train, c.eval_split)
        for data in (self.train, self.eval):
            if data.labels is None:
                raise HeadstartError(f"{data.source}: task.kind=image needs labelled images")
        if self.train.images.shape[1:] != self.eval.images.shape[1:]:
            raise HeadstartError(
                f"{self.eval.source}: images of shape {self.eval.images.shape[1:]}, but the training images "
                f"are {self.train.images.shape[1:]}"
            )
        assert self.eval.labels is not None
        if self.eval.labels.max() >= self.n_classes:
            raise HeadstartError(f"{self.eval.source}: label {self.eval.labels.max()} is not among the training labels")
        _, height, width, channels = self.train.images.shape
        views = build_views((height, width), channels, self._augment) if self._augment else None
        self.objective = ImageClassify(views)

    @property
    def strata(self) -> np.ndarray:
        assert self.train is not None and self.train.labels is not None
        return self.train.labels

    @property
    def n_classes(self) -> int:
        assert self.train is not None
        return self.train.n_classes

    def encode(self, split: str, rows: np.ndarray | None = None) -> EncodedImages:
        data = self.train if split == "train" else self.eval
        assert data is not None and data.labels is not None
        rows = np.arange(len(data)) if rows is None else rows
        return EncodedImages(data.images[rows], data.labels[rows])

    def build_model(self, backbone: nn.Module, pooling: str) -> ImageClassifier:
        return ImageClassifier(backbone, self.n_classes)

    def collate(self, encoded: EncodedImages) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        def batch(rows: list[int]) -> dict[str, torch.Tensor]:
            return {"input": torch.from_numpy(encoded.images[rows]), "label": torch.from_numpy(encoded.labels[rows])}

        return batch

    def size(self, encoded: EncodedImages) -> int:
        return len(encoded.images)

    def units(self, encoded: EncodedImages) -> int:
        return len(encoded.images)

    def features(self, model: nn.Module, encoded: EncodedImages) -> tuple[torch.Tensor, torch.Tensor]:
        return image_features(model.backbone, encoded.images), torch.from_numpy(encoded.labels)

    def score(self, model: nn.Module, encoded: EncodedImages, final: bool = False) -> dict[str, float]:
        if not final and len(encoded.images) > TRACKED_IMAGES:  # curves while training: an even subset
            rows = np.linspace(0, len(encoded.images) - 1, TRACKED_IMAGES).round().astype(np.int64)
            encoded = EncodedImages(encoded.images[rows], encoded.labels[rows])
        features, _ = self.features(model, encoded)
        return self.metrics(head_logits(model.head, features), encoded.labels)

    def metrics(self, logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        """Accuracy, macro-F1 and ROC AUC of class scores (N, n_classes) against the labels."""
        scores = accuracy_and_macro_f1(logits.argmax(-1).numpy(), labels, self.n_classes)
        return {**scores, "auc": roc_auc(logits, labels)}
