"""Score a checkpoint on prepared shards or raw text: loss, perplexity, bits per byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from headstart.data.shards import open_shards
from headstart.data.sources import ReadOptions, SkipLog, read_documents
from headstart.data.tokenizers import load_tokenizer, tokenize_documents, tokenizer_hash, utf8_len
from headstart.data.windows import eval_windows
from headstart.errors import HeadstartError
from headstart.objectives.registry import build_objective
from headstart.train.checkpoint import load_pretrained
from headstart.train.validate import evaluate_windows
from headstart.workflows.pretrain_data import split_bytes_per_token


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: list[str] | None = None,
    split: str = "val",
    seq_len: int | None = None,
    max_windows: int = 0,
    text_mode: str = "line",
    batch_size: int = 16,
) -> dict[str, float]:
    """Non-overlapping windows over the whole split (or ``max_windows`` spread over it)."""
    model, config, folder = load_pretrained(checkpoint)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    seq_len = seq_len or config.train.seq_len
    if seq_len > model.config.context:
        raise HeadstartError(f"--seq-len {seq_len}: longer than the model's context of {model.config.context}")
    data = data or [config.data.shards]
    if len(data) == 1 and (Path(data[0]) / "meta.json").is_file():
        shards = open_shards(data[0])
        if shards.tokenizer_hash != tokenizer_hash(tokenizer):
            raise HeadstartError(
                f"shards {data[0]}: tokenized with a different tokenizer than checkpoint {folder} "
                "(vocabulary mismatch); prepare the data with --tokenizer-path <checkpoint>/tokenizer.json"
            )
        tokens = shards.split(split)
        bytes_per_token = split_bytes_per_token(shards.meta, split)
    else:
        documents = list(read_documents(data, ReadOptions(text_mode=text_mode), SkipLog()))  # type: ignore[arg-type]
        if not documents:
            raise HeadstartError(f"evaluate: no documents in {', '.join(data)}")
        tokens = tokenize_documents(tokenizer, documents)
        bytes_per_token = sum(utf8_len(d) for d in documents) / len(tokens)
    windows = eval_windows(np.asarray(tokens), seq_len + 1, max_windows)
    objective = build_objective(config, tokenizer)
    with torch.no_grad():
        result = evaluate_windows(model, objective, windows, batch_size, bytes_per_token)
    result["windows"] = float(len(windows))
    result["tokens"] = float(len(windows) * seq_len)
    return result
