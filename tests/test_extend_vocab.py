import pytest
import torch

from headstart import api
from headstart.config import ModelConfig, PrepareConfig, TokenizerConfig
from headstart.data.extend_vocab import check_extends, extend_tokenizer, new_token_pieces
from headstart.data.prepare import prepare
from headstart.data.tokenizers import load_tokenizer, train_tokenizer
from headstart.errors import HeadstartError
from headstart.models.transformer import Transformer
from headstart.train import checkpoint as ckpt
from headstart.workflows.continued import grow_vocabulary

GENERAL = ["the cat sat on the mat", "a dog ran in the park", "we went to the market today"] * 30
DOMAIN = ["the glycoprotein binds the receptor", "immunohistochemistry of the glycoprotein",
          "receptor kinase and glycoprotein"] * 20  # fmt: skip


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_extending_keeps_every_old_id_and_shortens_the_domain_words(kind):
    old = train_tokenizer(GENERAL, TokenizerConfig(kind=kind, vocab_size=300))
    new = extend_tokenizer(old, DOMAIN, 12)
    check_extends(old, new, "test")  # every old token at its old id
    added = new.get_vocab_size() - old.get_vocab_size()
    assert 0 < added <= 12
    text = "the glycoprotein binds the receptor"
    assert len(new.encode(text).ids) <= len(old.encode(text).ids)
    assert "glycoprotein" in [token.removeprefix("Ġ") for token in new.encode(text).tokens]
    if kind != "wordpiece":  # byte-level kinds stay lossless
        assert new.decode(new.encode(text).ids) == text
    for index, ids in new_token_pieces(old, new).items():
        assert index >= old.get_vocab_size() and ids and max(ids) < old.get_vocab_size()


def test_a_retrained_tokenizer_is_not_an_extension():
    old = train_tokenizer(GENERAL, TokenizerConfig(kind="bpe", vocab_size=300))
    other = train_tokenizer(DOMAIN, TokenizerConfig(kind="bpe", vocab_size=300))
    with pytest.raises(HeadstartError, match=r"neither the checkpoint's nor an extension of it"):
        check_extends(old, other, "data.shards=x")
    with pytest.raises(HeadstartError, match=r"char tokenizer"):
        extend_tokenizer(train_tokenizer(GENERAL, TokenizerConfig(kind="char")), DOMAIN, 4)


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_start_at_the_mean_of_their_pieces(tied):
    backbone = Transformer(ModelConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=8, context=8, tie_embeddings=tied))
    before = backbone.embed.weight.detach().clone()
    grow_vocabulary(backbone, {10: [1, 2], 11: [3, 4, 5]})
    after = backbone.embed.weight.detach()
    assert after.shape == (12, 8) and torch.equal(after[:10], before)
    assert torch.allclose(after[10], before[[1, 2]].mean(0)) and torch.allclose(after[11], before[[3, 4, 5]].mean(0))
    assert backbone.logits(torch.zeros(1, 8)).shape == (1, 12)
    with pytest.raises(HeadstartError, match=r"do not follow"):
        grow_vocabulary(backbone, {20: [1]})


def test_continuing_on_shards_with_an_extended_tokenizer_grows_the_checkpoint(tmp_path, tiny_decoder):
    corpus = tmp_path / "domain.txt"
    corpus.write_text("\n".join(DOMAIN) + "\n")
    shards = tmp_path / "shards"
    tokenizer = TokenizerConfig(path=str(tiny_decoder / "tokenizer.json"), extend=10)
    prepare(PrepareConfig(inputs=[str(corpus)], out=str(shards), val_fraction=0.1, workers=1, tokenizer=tokenizer))
    old, new = load_tokenizer(tiny_decoder / "tokenizer.json"), load_tokenizer(shards / "tokenizer.json")
    assert new.get_vocab_size() == old.get_vocab_size() + 10

    overrides = [f"init={tiny_decoder}", f"data.shards={shards}", f"run.out_dir={tmp_path}", "run.name=grown",
                 "train.seq_len=16", "train.batch_size=2", "train.steps=1", "train.eval_every=0", "optim.lr=0",
                 "train.precision=fp32", "init_optimizer=carry"]  # fmt: skip
    result = api.pretrain("gpt-tiny", overrides, quiet=True)
    start = ckpt.read_config(tiny_decoder)["model"]
    trained = Transformer(ModelConfig(**start))
    ckpt.load_weights(tiny_decoder, trained)
    grown = Transformer(ModelConfig(**{**start, "vocab_size": new.get_vocab_size()}))
    ckpt.load_weights(result.checkpoint, grown)
    old_rows = trained.embed.weight.detach()
    assert torch.equal(grown.embed.weight.detach()[: len(old_rows)], old_rows)
    for index, ids in new_token_pieces(old, new).items():
        assert torch.allclose(grown.embed.weight.detach()[index], old_rows[ids].mean(0))
