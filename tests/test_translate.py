import json
import random

import numpy as np
import pytest
import sacrebleu
import torch

from headstart import api
from headstart.config import ModelConfig
from headstart.errors import HeadstartError
from headstart.generate import sample
from headstart.models.transformer import Transformer
from headstart.tasks.translate import Translator, decode, read_pairs

WORDS = "the cat sat on a mat while dogs ran far away".split()


def write_pairs(path, n, seed):
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            words = rng.choices(WORDS, k=rng.randint(2, 5))
            handle.write(json.dumps({"src": " ".join(words), "tgt": " ".join(words)}) + "\n")  # a copy task
    return path


def test_bleu_on_a_hand_computed_pair():
    # n-gram precisions 5/6, 4/5, 3/4, 2/3 and no brevity penalty: BLEU = (1/3)^(1/4)
    score = sacrebleu.corpus_bleu(["a b c d e f"], [["a b c d e g"]]).score
    assert score == pytest.approx(100 * (1 / 3) ** 0.25, abs=1e-6)


def test_greedy_decoding_matches_generate_and_beam_scores_at_least_as_high():
    torch.manual_seed(0)
    model = Translator(Transformer(ModelConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=32, context=32, causal=True)))
    model.eval()
    prompts = [np.array([0, 7, 8, 9, 5]), np.array([0, 11, 5]), np.array([0, 12, 13, 14, 15, 16, 5])]
    greedy = decode(model, prompts, max_new=8, stop=0, pad=1, beam=1)
    for prompt, tokens in zip(prompts, greedy, strict=True):
        reference = sample(model.backbone, prompt.tolist(), 8, temperature=0, stop_token=0)
        assert tokens == [t for t in reference if t != 0][: len(tokens)] and len(tokens) <= 8

    @torch.no_grad()
    def logprob(prompt, tokens):
        sequence = torch.tensor([[*prompt.tolist(), *tokens]])
        logits = model(sequence, torch.ones_like(sequence, dtype=torch.bool))[0].log_softmax(-1)
        return sum(float(logits[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))

    beamed = decode(model, prompts, max_new=8, stop=0, pad=1, beam=4)
    compared = 0
    for prompt, g, b in zip(prompts, greedy, beamed, strict=True):
        if len(g) == len(b) == 8:  # neither stopped: same length, so beam's best is at least greedy's
            assert logprob(prompt, b) >= logprob(prompt, g) - 1e-4
            compared += 1
    assert compared >= 2


def test_translation_finetune_learns_to_copy(tiny_decoder, tmp_path):
    train, test = write_pairs(tmp_path / "train.jsonl", 400, 0), write_pairs(tmp_path / "test.jsonl", 40, 1)
    settings = [f"task.train={train}", f"task.eval={test}", f"init={tiny_decoder}", f"run.out_dir={tmp_path}",
                "budget=300", "train.steps=300", "train.eval_every=100", "train.precision=fp32", "optim.lr=3e-3",
                "task.max_len=32", "task.beam_size=2", "train.batch_size=16"]  # fmt: skip
    result = api.finetune("multi30k", settings, quiet=True)
    assert result.metric == "bleu" and result.metrics["bleu"] > 50
    with pytest.raises(HeadstartError, match=r"readout=logistic: reads task\.kind classify or tag or image, not"):
        api.finetune("multi30k", [*settings, "readout=logistic"], quiet=True)


def test_translation_input_errors(tmp_path, tiny_shards):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"src": "a", "tgt": ""}) + "\n")
    with pytest.raises(HeadstartError, match="expected non-empty text fields"):
        read_pairs(bad, "src", "tgt")
    encoder = Transformer(ModelConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16, context=16, causal=False))
    with pytest.raises(HeadstartError, match="needs a causal"):
        Translator(encoder)
