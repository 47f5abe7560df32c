import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headstart import api
from headstart.config import ModelConfig
from headstart.errors import HeadstartError
from headstart.models.pretraining import SentenceEncoder
from headstart.models.transformer import Transformer
from headstart.objectives.contrastive import SimCSE
from tests.conftest import fit_one_batch


def simcse(tmp_path, shards, init, name="simcse", *extra):
    overrides = [f"data.shards={shards}", f"init={init}", "objective.name=simcse", "objective.temperature=0.05",
                 "model.dropout=0.1", "train.seq_len=32", "train.batch_size=8", "train.steps=4", "train.eval_every=0",
                 "train.precision=fp32", f"run.out_dir={tmp_path}", f"run.name={name}", *extra]  # fmt: skip
    return api.pretrain("bert-tiny", overrides, quiet=True)


def test_simcse_learns_to_pair_a_sentence_with_its_dropout_twin():
    torch.manual_seed(0)
    backbone = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, context=16, dropout=0.1))
    model, objective = SentenceEncoder(backbone), SimCSE(pad_id=0, temperature=0.05)
    ids = torch.randint(1, 50, (16, 12))
    ids[:8, 9:] = 0  # padding never counts as a token
    batch = objective.make_batch(ids, torch.Generator())
    assert objective.tokens(batch) == 16 * 12 - 8 * 3
    losses, metrics = fit_one_batch(objective, model, batch, steps=20)
    assert losses[-1] < losses[0] and metrics["pair_accuracy"].item() >= 0.9


def test_simcse_continues_a_checkpoint_and_its_backbone_fine_tunes_and_embeds(tmp_path, tiny_shards, tiny_encoder):
    result = simcse(tmp_path, tiny_shards, tiny_encoder)
    config = (result.checkpoint / "config.yaml").read_text()
    assert f"init: {tiny_encoder}" in config and "dropout: 0.1" in config
    compute = json.loads((result.checkpoint / "compute.json").read_text())
    assert compute["steps"] == 4 and compute["flops"] > 0
    # The backbone starts where the checkpoint ended: before any step, it equals the encoder's.
    unchanged = simcse(tmp_path, tiny_shards, tiny_encoder, "zero", "optim.lr=0", "schedule.warmup_steps=0")
    start, after = (
        load_file(str(tiny_encoder / "model.safetensors")),
        load_file(str(unchanged.checkpoint / "model.safetensors")),
    )
    assert all(torch.equal(start[k], after[f"backbone.{k}"]) for k in start if not k.startswith("lm_head"))

    texts = tmp_path / "sentences.txt"
    texts.write_text("the cat sat on a mat\n\nbirds sang over green hills\nfish swim\n")
    out = api.embed(result.checkpoint, [str(texts)], tmp_path / "emb.npy")
    vectors = np.load(out)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    again = np.load(api.embed(result.checkpoint, [str(texts)], tmp_path / "again.npy"))
    assert np.array_equal(vectors, again)  # eval mode: no dropout noise


def test_continuing_needs_the_same_tokenizer(tmp_path, tiny_shards, tiny_simclr):
    with pytest.raises(HeadstartError, match=r"an image checkpoint; continuing needs a text one"):
        simcse(tmp_path, tiny_shards, tiny_simclr)
