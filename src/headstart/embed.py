"""Sentence embeddings from a text checkpoint: the backbone's hidden states pooled over real
tokens, one float32 row per input record (what a retrieval index or a probe reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from headstart.data.tokenizers import tokenizer_info
from headstart.files import atomic_path
from headstart.models.heads import Pooling, pool
from headstart.objectives.classify import pad_batch
from headstart.tasks.base import length_batches
from headstart.tasks.classify import encode_texts


@torch.no_grad()
def embed_texts(
    backbone: torch.nn.Module, tokenizer: Tokenizer, texts: list[str], pooling: Pooling = "mean", batch_size: int = 64
) -> np.ndarray:
    """(len(texts), n_embd) embeddings; texts longer than the model's context are cut."""
    ids = encode_texts(tokenizer, texts, backbone.config.context)
    pad_id = tokenizer_info(tokenizer).pad_id
    out = np.zeros((len(texts), backbone.config.n_embd), dtype=np.float32)
    backbone.eval()
    for rows in length_batches([len(x) for x in ids], batch_size):
        batch, mask = pad_batch([ids[r] for r in rows], pad_id)
        out[rows] = pool(backbone(batch, padding_mask=mask), mask, pooling).float().numpy()
    return out


def save_array(array: np.ndarray, path: Path) -> None:
    """Write ``path`` (.npy) through a temporary sibling: a crash leaves the previous file."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, array)
