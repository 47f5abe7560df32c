"""Prompt-based fine-tuning (readout=prompt) and SetFit (readout=setfit): the label word a tiny
model was built to know, the pattern and label-word checks, the contrastive pairs, and a study
that resumes with the new options."""

import json
import random

import numpy as np
import pytest
import torch

from headstart import api
from headstart.config import PrepareConfig, TokenizerConfig
from headstart.data.prepare import prepare
from headstart.errors import HeadstartError
from headstart.objectives.pair_similarity import PairSimilarity
from headstart.readouts.prompt import label_word_ids, pattern_tokens, with_pattern
from headstart.readouts.setfit import PairBatches, contrastive_pairs
from headstart.tasks.classify import EncodedTexts

GOOD, BAD = "nice sunny warm bright".split(), "cold grim dark wet".split()
FILLER = "the day was in our town and".split()


def review(rng: random.Random, label: int) -> str:
    words = [*rng.choices(FILLER, k=4), rng.choice(GOOD if label else BAD)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def cloze_decoder(tmp_path_factory):
    """A causal LM pretrained on texts that always end '. it was great' after a good word and
    '. it was terrible' after a bad one: it knows which label word follows the pattern."""
    root = tmp_path_factory.mktemp("cloze")
    rng = random.Random(0)
    lines = []
    for _ in range(1500):
        label = rng.randint(0, 1)
        lines.append(f"{review(rng, label)} . it was {'great' if label else 'terrible'}")
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    tokenizer = TokenizerConfig(kind="bpe", vocab_size=300)
    prepare(PrepareConfig(inputs=[str(root / "corpus.txt")], out=str(root / "shards"), workers=1, tokenizer=tokenizer))
    overrides = [f"data.shards={root / 'shards'}", f"run.out_dir={root}", "run.name=lm", "model.n_layer=2",
                 "model.n_embd=48", "model.n_head=2", "model.context=32", "train.seq_len=32", "train.batch_size=16",
                 "train.steps=300", "train.eval_every=0", "train.precision=fp32", "optim.lr=3e-3",
                 "embeddings.init=random"]  # fmt: skip
    return api.pretrain("gpt-tiny", overrides, quiet=True).checkpoint, root


def write_reviews(path, n, seed):
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            label = rng.randint(0, 1)
            handle.write(json.dumps({"text": review(rng, label), "label": label}) + "\n")
    return path


def prompt_cell(checkpoint, root, *extra):
    train, dev = write_reviews(root / "train.jsonl", 200, 1), write_reviews(root / "dev.jsonl", 100, 2)
    settings = [f"task.train={train}", f"task.eval={dev}", "task.max_len=24", f"init={checkpoint}", "budget=20",
                "train.precision=fp32", f"run.out_dir={root}", "readout=prompt",
                "prompt_pattern={text} . it was"]  # fmt: skip
    return api.finetune("sst2", [*settings, *extra], quiet=True)


def test_prompt_scoring_picks_the_label_word_the_model_knows(cloze_decoder):
    checkpoint, root = cloze_decoder
    frozen = ["optim.lr=0", "train.steps=2", "train.eval_every=1"]  # no learning: the pretrained LM's own guess
    right = prompt_cell(checkpoint, root, *frozen, "label_words=[terrible,great]", "run.name=right")
    swapped = prompt_cell(checkpoint, root, *frozen, "label_words=[great,terrible]", "run.name=swapped")
    assert right.metrics["accuracy"] >= 0.9 and swapped.metrics["accuracy"] <= 0.1
    tuned = prompt_cell(checkpoint, root, "label_words=[terrible,great]", "train.steps=20", "run.name=tuned")
    assert tuned.metrics["accuracy"] >= 0.9 and tuned.steps == 20


def test_prompt_checks_its_pattern_and_label_words(cloze_decoder):
    checkpoint, root = cloze_decoder
    with pytest.raises(HeadstartError, match="one word per label"):
        prompt_cell(checkpoint, root, "label_words=[great]", "train.steps=1")
    with pytest.raises(HeadstartError, match=r"'zzqxw' is \d+ tokens"):
        prompt_cell(checkpoint, root, "label_words=[terrible,zzqxw]", "train.steps=1")
    with pytest.raises(HeadstartError, match="exactly once"):
        api.finetune("sst2", ["readout=prompt", "prompt_pattern=It was"], quiet=True)


def test_the_pattern_wraps_each_text_and_cuts_the_text_not_the_pattern():
    encoded = EncodedTexts([np.array([0, 5, 6, 7, 8]), np.array([0, 9])], np.array([1, 0]))
    wrapped = with_pattern(encoded, before=[3], after=[4, 4], max_len=6)
    assert [x.tolist() for x in wrapped.ids] == [[0, 3, 5, 6, 4, 4], [0, 3, 9, 4, 4]]
    with pytest.raises(HeadstartError, match="no room"):
        with_pattern(encoded, before=[3, 3], after=[4, 4, 4], max_len=6)


def test_pattern_pieces_and_label_words_use_the_checkpoint_tokenizer(cloze_decoder):
    from headstart.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(cloze_decoder[0] / "tokenizer.json")
    before, after = pattern_tokens(tokenizer, "{text} . it was")
    assert before == [] and tokenizer.decode(after).strip() == ". it was"
    great, terrible = label_word_ids(tokenizer, ["great", "terrible"], ["0", "1"])
    assert tokenizer.decode([great]).strip() == "great" and tokenizer.decode([terrible]).strip() == "terrible"


def test_contrastive_pairs_pair_each_example_with_its_class_and_another():
    labels = np.array([0, 0, 1, 1, 2])
    pairs = contrastive_pairs(labels, per_example=3, seed=0)
    assert len(pairs) == 2 * 3 * len(labels)
    for first, second, same in pairs:
        assert same == int(labels[first] == labels[second])
        assert first != second or labels[first] == 2  # class 2 has no other member: itself
    assert (np.bincount(pairs[:, 0], minlength=5) == 6).all()
    assert np.array_equal(pairs, contrastive_pairs(labels, 3, seed=0))  # seeded
    with pytest.raises(HeadstartError, match="one class only"):
        contrastive_pairs(np.array([1, 1, 1]), 2, seed=0)


class MeanOfEmbeddings(torch.nn.Module):
    """A backbone whose hidden states are the token embeddings themselves."""

    def __init__(self, vectors: torch.Tensor) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(vectors, freeze=False)

    def forward(self, ids, padding_mask=None):
        return self.embed(ids)


def test_pair_similarity_regresses_cosine_onto_same_class():
    model = torch.nn.Module()
    model.backbone = MeanOfEmbeddings(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))

    def collate(rows):
        ids = torch.tensor([[r] for r in rows])
        return {"input": ids, "mask": torch.ones_like(ids, dtype=torch.bool), "label": torch.zeros(len(rows))}

    batch = PairBatches(np.array([[0, 1, 1], [0, 2, 0], [0, 2, 1]]), collate).batch(0, 3)
    assert "label" not in batch["first"]  # only whether the two share a class
    loss, extra = PairSimilarity().loss(model, batch)
    # cosines 1, 0, 0 against targets 1, 0, 1: only the last pair is off, by 1
    assert loss.item() == pytest.approx(1 / 3) and extra["similarity"].item() == pytest.approx(1 / 3)


def test_setfit_fine_tunes_and_a_study_resumes_with_the_new_readouts(tiny_decoder, tmp_path, write_task):
    train, dev = write_task(tmp_path / "train.jsonl", 200, 0), write_task(tmp_path / "dev.jsonl", 60, 1)
    settings = [f"task.train={train}", f"task.eval={dev}", "task.max_len=16", f"init={tiny_decoder}", "budget=40",
                "train.precision=fp32", "optim.lr=3e-3", "setfit_pairs=4", "train.eval_every=5",
                f"run.out_dir={tmp_path}", "readout=setfit"]  # fmt: skip
    result = api.finetune("sst2", settings, quiet=True)
    assert result.steps == 8  # 32 examples × 4 × 2 pairs, batches of 32
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.flops > 0
    assert "similarity" in (result.run_dir / "metrics.jsonl").read_text()
    study = tmp_path / "study.yaml"
    study.write_text(
        f"finetune: sst2\nsettings: [task.train={train}, task.eval={dev}, task.max_len=16, train.precision=fp32, "
        f"train.steps=4, train.eval_every=2, setfit_pairs=2, 'label_words=[the,cat]']\n"
        f"inits: {{pretrained: {tiny_decoder}, scratch: scratch}}\nbudgets: [20]\nseeds: 1\n"
        "sweep: {setfit: [readout=setfit], prompt: [readout=prompt], consistency: [readout=consistency]}\n"
        f"run: {{out_dir: {tmp_path}, name: study}}\n"
    )
    api.transfer(str(study))
    results = tmp_path / "study" / "results.jsonl"
    first = results.read_text()
    assert len(first.splitlines()) == 2 and all(json.loads(x)["chosen"] in ("setfit", "prompt", "consistency")
                                                for x in first.splitlines())  # fmt: skip
    api.transfer(str(study))  # every cell is finished: none runs again
    assert results.read_text() == first
