"""Text classification (e.g. SST-2 sentiment): a pooled sequence representation, one label per
record; reported as accuracy and macro-F1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from headstart.config import TaskConfig
from headstart.data.labelled import LabelledText, read_labelled_jsonl
from headstart.data.tokenizers import tokenizer_info
from headstart.models.heads import SequenceClassifier, head_logits, pool
from headstart.objectives.classify import Classify, accuracy_and_macro_f1, pad_batch
from headstart.tasks.base import TextTask, length_batches


@dataclass
class EncodedTexts:
    ids: list[np.ndarray]
    labels: np.ndarray


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_len: int) -> list[np.ndarray]:
    """Token ids with the end-of-document token in front (the start marker both kinds of model saw)."""
    eod = tokenizer_info(tokenizer).eod_id
    return [
        np.array([eod, *enc.ids[: max_len - 1]], dtype=np.int64)
        for enc in tokenizer.encode_batch(texts, add_special_tokens=False)
    ]


@torch.no_grad()
def pooled_features(model: SequenceClassifier, ids: list[np.ndarray], pad_id: int) -> torch.Tensor:
    """The pooled backbone output the head reads."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    features = torch.empty(len(ids), model.head.in_features)
    for rows in length_batches([len(x) for x in ids]):
        batch, mask = pad_batch([ids[r] for r in rows], pad_id)
        batch, mask = batch.to(device), mask.to(device)
        hidden = model.backbone(batch, padding_mask=mask)
        features[torch.from_numpy(rows)] = pool(hidden, mask, model.pooling).float().cpu()
    model.train(was_training)
    return features


class ClassifyTask(TextTask):
    metric = "accuracy"
    track_eval = True

    def __init__(self, config: TaskConfig, tokenizer: Tokenizer | None) -> None:
        super().__init__(config, tokenizer)
        self.objective = Classify()
        self.train: LabelledText | None = None
        self.eval: LabelledText | None = None

    def read(self) -> None:
        c = self.config
        self.train = read_labelled_jsonl(c.train, c.text_field, c.label_field)
        self.eval = read_labelled_jsonl(c.eval, c.text_field, c.label_field, classes=self.train.classes)

    @property
    def strata(self) -> np.ndarray:
        assert self.train is not None
        return self.train.labels

    @property
    def n_classes(self) -> int:
        assert self.train is not None
        return len(self.train.classes)

    def encode(self, split: str, rows: np.ndarray | None = None) -> EncodedTexts:
        data = self.train if split == "train" else self.eval
        assert data is not None
        rows = np.arange(len(data.texts)) if rows is None else rows
        ids = encode_texts(self.tokenizer, [data.texts[i] for i in rows], self.config.max_len)
        return EncodedTexts(ids, data.labels[rows])

    def build_model(self, backbone: nn.Module, pooling: str) -> SequenceClassifier:
        return SequenceClassifier(backbone, self.n_classes, pooling)  # type: ignore[arg-type]

    def collate(self, encoded: EncodedTexts) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        def batch(rows: list[int]) -> dict[str, torch.Tensor]:
            ids, mask = pad_batch([encoded.ids[r] for r in rows], self.pad_id)
            return {"input": ids, "mask": mask, "label": torch.from_numpy(encoded.labels[rows])}

        return batch

    def size(self, encoded: EncodedTexts) -> int:
        return len(encoded.ids)

    def features(self, model: nn.Module, encoded: EncodedTexts) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled_features(model, encoded.ids, self.pad_id), torch.from_numpy(encoded.labels)  # type: ignore[arg-type]

    def score(self, model: nn.Module, encoded: EncodedTexts, final: bool = False) -> dict[str, float]:
        features, _ = self.features(model, encoded)
        return self.metrics(head_logits(model.head, features), encoded.labels)

    def metrics(self, logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        """Accuracy and macro-F1 of class scores (N, n_classes) against the labels."""
        return accuracy_and_macro_f1(logits.argmax(-1).numpy(), labels, self.n_classes)
