import json

import numpy as np
import pytest
import torch

from headstart.config import EmbeddingsConfig, ModelConfig
from headstart.data.shards import open_shards
from headstart.models.transformer import Transformer, resolve
from headstart.objectives.skipgram import train_skipgram
from headstart.transfer.reference import train_word_vectors
from headstart.workflows.pretrain_data import skipgram_embeddings
from tests.test_pretrain import run


def two_topics(n_docs: int = 600, seed: int = 0) -> list[np.ndarray]:
    """Documents drawn from ids 0–49 or from ids 50–99, never both: skip-gram must separate them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50, 30) + 50 * (d % 2) for d in range(n_docs)]


def test_skipgram_puts_ids_that_share_contexts_together():
    documents = two_topics()
    counts = np.bincount(np.concatenate(documents), minlength=101)  # id 100 never occurs
    trained = train_skipgram(documents, counts, dim=16, epochs=3, batch_size=512, lr=0.05, seed=3)
    vectors = torch.nn.functional.normalize(trained.vectors[:100], dim=1)
    similarity = vectors @ vectors.T
    within = torch.block_diag(torch.ones(50, 50), torch.ones(50, 50)).bool() & ~torch.eye(100, dtype=torch.bool)
    assert similarity[within].mean() > similarity[:50, 50:].mean() + 0.4
    torch.manual_seed(3)
    centre, _context = torch.nn.Embedding(101, 16), torch.nn.Embedding(101, 16)
    untouched = centre.weight.detach().uniform_(-0.5 / 16, 0.5 / 16)
    assert torch.equal(trained.vectors[100], untouched[100])  # no pair ever touches an unseen id
    assert trained.pairs > 0 and trained.flops == 6.0 * trained.pairs * 16 * 6
    again = train_skipgram(documents, counts, dim=16, epochs=3, batch_size=512, lr=0.05, seed=3)
    assert torch.equal(again.vectors, trained.vectors)


def test_word_vectors_keep_frequent_words_only():
    texts = ["the cat sat", "the dog sat", "the cat ran", "a rare word"]
    vectors = train_word_vectors(texts, dim=8, min_count=2, epochs=1)
    assert set(vectors.vocabulary) == {"the", "cat", "sat"}
    features = vectors.sentence_features(["the cat", "unknown words"])
    assert torch.allclose(features[0], vectors.vectors[[vectors.vocabulary["the"], vectors.vocabulary["cat"]]].mean(0))
    assert torch.equal(features[1], torch.zeros(8))


def test_warm_start_sets_the_used_token_embeddings_at_init_scale(tiny_shards):
    shards = open_shards(tiny_shards)
    config = resolve(ModelConfig(n_layer=1, n_head=2, n_embd=32, context=32, vocab_size=shards.vocab_size))
    backbone = Transformer(config)
    before = backbone.embed.weight.detach().clone()
    skipgram_embeddings(backbone, shards, EmbeddingsConfig(init="skipgram", epochs=1), seed=0)
    after = backbone.embed.weight.detach()
    used = torch.from_numpy(np.unique(np.asarray(shards.train))).long()
    used = used[used != shards.eod_id]
    unused = torch.ones(config.vocab_size, dtype=torch.bool)
    unused[used] = False
    assert not torch.equal(before[used], after[used])
    assert torch.equal(before[unused], after[unused])  # tokens the corpus never uses keep their random start
    assert after[used].std().item() == pytest.approx(config.init_std, rel=1e-3)


def test_pretraining_counts_the_warm_start_in_its_compute(tiny_shards, tmp_path):
    result = run(tiny_shards, tmp_path, "warm", ["train.steps=2", "embeddings.init=skipgram", "embeddings.epochs=1"])
    compute = json.loads((result.checkpoint / "compute.json").read_text())
    assert compute["flops"] > compute["flops_per_token"] * compute["tokens"]  # the loop's, plus skip-gram's
