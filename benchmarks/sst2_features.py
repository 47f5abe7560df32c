"""Why one minute of skip-gram beats a 20-CPU-minute transformer at 100–500 SST-2 labels.

Every readout is the study's logistic probe (L2 chosen on the validation split carved from
the budget) on frozen, mean-pooled features, over the same budgets and seeds as the study:

- each layer of the checkpoint (0 = the token embedding), and all layers concatenated;
- skip-gram on this checkpoint's BPE tokens, against skip-gram on words (the study's reference):
  how much of the gap is the vocabulary;
- token skip-gram concatenated with the checkpoint's layers: whether the transformer adds
  anything a probe can use on top of word vectors.

    python benchmarks/sst2_features.py runs/bench/sst2-clm-20 [--seeds 5] [--layers-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA
from headstart.config import FinetuneConfig
from headstart.data.labelled import read_labelled_jsonl, split_validation, stratified_budget
from headstart.data.tokenizers import tokenizer_info
from headstart.models.heads import pool
from headstart.objectives.classify import pad_batch
from headstart.readouts.context import load_backbone
from headstart.readouts.probe import fit_logistic
from headstart.tasks.base import length_batches
from headstart.tasks.classify import encode_texts
from headstart.transfer.reference import train_word_vectors

BUDGETS = (100, 500, 2000)


@torch.no_grad()
def layer_features(backbone: torch.nn.Module, ids: list[np.ndarray], pad_id: int) -> torch.Tensor:
    """(N, n_layer + 1, width): the mean over real tokens of the embedding and of each block's output."""
    out = torch.zeros(len(ids), len(backbone.blocks) + 1, backbone.config.n_embd)
    for rows in length_batches([len(x) for x in ids]):
        batch, mask = pad_batch([ids[r] for r in rows], pad_id)
        states = backbone.layer_states(batch, padding_mask=mask)
        out[torch.from_numpy(rows)] = torch.stack([pool(h, mask, "mean") for h in states], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--layers-only", action="store_true", help="skip the skip-gram readouts (5 CPU-minutes)")
    args = parser.parse_args()
    sst2 = DATA / "tasks" / "sst2"
    train = read_labelled_jsonl(sst2 / "train.jsonl")
    dev = read_labelled_jsonl(sst2 / "dev.jsonl", classes=train.classes)
    backbone, tokenizer = load_backbone(FinetuneConfig(init=args.checkpoint))
    backbone.eval()
    pad_id = tokenizer_info(tokenizer).pad_id

    splits = {}
    for budget in BUDGETS:
        for seed in range(args.seeds):
            chosen = stratified_budget(train.labels, budget, seed)
            splits[budget, seed] = split_validation(train.labels, chosen, 0.2, seed, 2000)
    used = np.unique(np.concatenate([np.concatenate(s) for s in splits.values()]))
    start = time.perf_counter()
    layers_train = torch.zeros(len(train.texts), len(backbone.blocks) + 1, backbone.config.n_embd)
    layers_train[torch.from_numpy(used)] = layer_features(
        backbone, encode_texts(tokenizer, [train.texts[i] for i in used], 64), pad_id
    )
    layers_dev = layer_features(backbone, encode_texts(tokenizer, dev.texts, 64), pad_id)
    print(f"transformer features: {time.perf_counter() - start:.0f} s", flush=True)

    depth = len(backbone.blocks)
    readouts = {f"layer {n}": ([n], None) for n in range(depth + 1)}
    readouts["all layers"] = (list(range(depth + 1)), None)
    if not args.layers_only:
        readouts |= skipgram_readouts(tokenizer, train.texts, dev.texts, depth)
    labels = torch.from_numpy(train.labels)
    print(f"{'readout':32} " + " ".join(f"{b:>12,}" for b in BUDGETS))
    for name, (layers, extra) in readouts.items():
        x, x_dev = layers_train[:, layers].flatten(1), layers_dev[:, layers].flatten(1)
        if extra is not None:
            x, x_dev = torch.cat([extra[0], x], 1), torch.cat([extra[1], x_dev], 1)
        cells = []
        for budget in BUDGETS:
            scores = []
            for seed in range(args.seeds):
                fit, held = splits[budget, seed]
                probe = fit_logistic(x[fit], labels[fit], x[held], labels[held], len(train.classes))
                scores.append(100 * float((probe.predict(x_dev).numpy() == dev.labels).mean()))
            cells.append(f"{statistics.mean(scores):5.1f} ± {statistics.stdev(scores):3.1f}")
        print(f"{name:32} " + " ".join(f"{c:>12}" for c in cells), flush=True)


def skipgram_readouts(
    tokenizer: Tokenizer, train_texts: list[str], dev_texts: list[str], depth: int
) -> dict[str, tuple[list[int], tuple[torch.Tensor, torch.Tensor]]]:
    """Skip-gram on BPE tokens and on words (WikiText-2 + SST-2 sentences), alone and beside the
    checkpoint's layers: (layers, (train features, dev features)) per readout."""

    def as_tokens(texts: list[str]) -> list[str]:
        return [" ".join(f"t{i}" for i in e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    corpus = [line for line in (DATA / "text" / "wikitext2" / "train.txt").read_text().splitlines() if line.strip()]
    corpus += train_texts
    token_vectors = train_word_vectors(as_tokens(corpus), min_count=1)
    word_vectors = train_word_vectors(corpus)
    print(f"skip-gram: tokens {token_vectors.seconds:.0f} s, words {word_vectors.seconds:.0f} s", flush=True)
    token = tuple(token_vectors.sentence_features(as_tokens(t)) for t in (train_texts, dev_texts))
    word = tuple(word_vectors.sentence_features(t) for t in (train_texts, dev_texts))
    return {
        "skip-gram, BPE tokens": ([], token),
        "skip-gram, words": ([], word),
        "token skip-gram + last layer": ([depth], token),
        "token skip-gram + all layers": (list(range(depth + 1)), token),
    }


if __name__ == "__main__":
    main()
