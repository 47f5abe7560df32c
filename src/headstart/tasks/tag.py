"""Token classification (named entities, e.g. CoNLL-2003): one tag per word, predicted at the
word's first sub-word token; reported as entity-level F1 (seqeval, CoNLL rules).

Words are joined by spaces and tokenized once, as in pretraining; the character offsets map
each token back to its word. Only a word's first token carries a training label; words cut
off by ``task.max_len`` are predicted ``O`` and counted, never silently dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from seqeval.metrics import f1_score, precision_score, recall_score
from tokenizers import Encoding, Tokenizer
from torch import nn

from headstart.config import TaskConfig
from headstart.data.labelled import TaggedText, read_tagged_jsonl
from headstart.data.tokenizers import tokenizer_info
from headstart.objectives.classify import pad_batch
from headstart.objectives.tag import IGNORE, TokenTargets
from headstart.tasks.base import TextTask, length_batches


@dataclass
class EncodedSentences:
    ids: list[np.ndarray]
    targets: list[np.ndarray]  # per token: the word's tag at its first token, IGNORE elsewhere
    first_token: list[np.ndarray]  # per word: its first token's position, -1 when truncated away
    tags: list[np.ndarray]  # per word: the gold tag

    @property
    def truncated_words(self) -> int:
        return int(sum((f < 0).sum() for f in self.first_token))


def align(words: list[str], encoding: Encoding, start_id: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (``start_id`` first) and each word's first token position (-1 if cut off),
    from the encoding of the words joined by single spaces."""
    text = " ".join(words)
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]]).tolist()
    ids = [start_id]
    first = np.full(len(words), -1, dtype=np.int64)
    for token_id, (begin, end) in zip(encoding.ids, encoding.offsets, strict=True):
        if len(ids) >= max_len:
            break
        position = next((p for p in range(begin, end) if text[p] != " "), None)
        if position is not None:
            word = bisect.bisect_right(starts, position) - 1
            if first[word] < 0:
                first[word] = len(ids)
        ids.append(token_id)
    return np.array(ids, dtype=np.int64), first


class TokenClassifier(nn.Module):
    """A backbone and a linear layer over every position's hidden state."""

    def __init__(self, backbone: nn.Module, n_tags: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, n_tags)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(idx, padding_mask=mask))


class TagTask(TextTask):
    metric = "f1"
    track_eval = True

    def __init__(self, config: TaskConfig, tokenizer: Tokenizer | None) -> None:
        super().__init__(config, tokenizer)
        self.objective = TokenTargets("tag", head_fraction=0.0)
        self.train: TaggedText | None = None
        self.eval: TaggedText | None = None

    def read(self) -> None:
        c = self.config
        self.train = read_tagged_jsonl(c.train, c.text_field, c.label_field)
        self.eval = read_tagged_jsonl(c.eval, c.text_field, c.label_field, tag_names=self.train.tag_names)

    @property
    def strata(self) -> np.ndarray:
        assert self.train is not None
        return self.train.strata

    def encode(self, split: str, rows: np.ndarray | None = None) -> EncodedSentences:
        data = self.train if split == "train" else self.eval
        assert data is not None
        rows = np.arange(len(data.words)) if rows is None else rows
        out = EncodedSentences([], [], [], [])
        start_id = tokenizer_info(self.tokenizer).eod_id
        encodings = self.tokenizer.encode_batch([" ".join(data.words[row]) for row in rows], add_special_tokens=False)
        for row, encoding in zip(rows, encodings, strict=True):
            ids, first = align(data.words[row], encoding, start_id, self.config.max_len)
            target = np.full(len(ids), IGNORE, dtype=np.int64)
            kept = first >= 0
            target[first[kept]] = data.tags[row][kept]
            out.ids.append(ids)
            out.targets.append(target)
            out.first_token.append(first)
            out.tags.append(data.tags[row])
        return out

    def build_model(self, backbone: nn.Module, pooling: str) -> TokenClassifier:
        assert self.train is not None
        return TokenClassifier(backbone, len(self.train.tag_names))

    def collate(self, encoded: EncodedSentences) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        def batch(rows: list[int]) -> dict[str, torch.Tensor]:
            ids, mask = pad_batch([encoded.ids[r] for r in rows], self.pad_id)
            target, _ = pad_batch([encoded.targets[r] for r in rows], IGNORE)
            return {"input": ids, "mask": mask, "target": target}

        return batch

    def size(self, encoded: EncodedSentences) -> int:
        return len(encoded.ids)

    @torch.no_grad()
    def _hidden_at_words(self, model: TokenClassifier, encoded: EncodedSentences) -> list[torch.Tensor]:
        """Per sentence, the backbone's hidden state at each kept word's first token."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out: list[torch.Tensor] = [torch.empty(0)] * len(encoded.ids)
        for rows in length_batches([len(x) for x in encoded.ids]):
            ids, mask = pad_batch([encoded.ids[r] for r in rows], self.pad_id)
            hidden = model.backbone(ids.to(device), padding_mask=mask.to(device)).float().cpu()
            for slot, row in enumerate(rows):
                first = encoded.first_token[row]
                out[row] = hidden[slot, torch.from_numpy(first[first >= 0])]
        model.train(was_training)
        return out

    def features(self, model: nn.Module, encoded: EncodedSentences) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self._hidden_at_words(model, encoded)  # type: ignore[arg-type]
        tags = [torch.from_numpy(t[f >= 0]) for t, f in zip(encoded.tags, encoded.first_token, strict=True)]
        return torch.cat(hidden), torch.cat(tags)

    def score(self, model: nn.Module, encoded: EncodedSentences, final: bool = False) -> dict[str, float]:
        assert self.train is not None
        names = self.train.tag_names
        head = model.head
        weight, bias = head.weight.detach().float().cpu(), head.bias.detach().float().cpu()
        gold, predicted = [], []
        hidden_at_words = self._hidden_at_words(model, encoded)  # type: ignore[arg-type]
        for hidden, first, tags in zip(hidden_at_words, encoded.first_token, encoded.tags, strict=True):
            words = np.zeros(len(tags), dtype=np.int64)  # a truncated word is predicted O (index 0)
            words[first >= 0] = (hidden @ weight.T + bias).argmax(-1).numpy()
            gold.append([names[t] for t in tags])
            predicted.append([names[t] for t in words])
        pairs = zip(gold, predicted, strict=True)
        return {
            "f1": float(f1_score(gold, predicted)),
            "precision": float(precision_score(gold, predicted)),
            "recall": float(recall_score(gold, predicted)),
            "token_accuracy": float(np.mean([g == p for gs, ps in pairs for g, p in zip(gs, ps, strict=True)])),
            "truncated_words": float(encoded.truncated_words),
        }
