"""The domain-mismatch report: each measure on hand-made corpora, the recommendation at the
extremes (identical and disjoint corpora), and one-line errors."""

import math
import random

import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers

from headstart import api
from headstart.data.sources import ReadOptions
from headstart.data.tokenizers import SPECIAL_TOKENS, UNK
from headstart.transfer.mismatch import measure_mismatch, sample_corpus, tokenize_sample, vocabulary_overlap
from tests.conftest import make_corpus
from tests.test_cli import assert_one_line_error, headstart

# Content words by count; "the", "of", "and" (stop words) and punctuation outnumber them all.
SOURCE = ["alpha"] * 5 + ["beta"] * 4 + ["gamma"] * 3 + ["delta"]
TARGET = ["gamma"] * 6 + ["omega"] * 5 + ["alpha"] * 4 + ["beta"]
NOISE = ["the"] * 9 + ["of"] * 8 + ["and"] * 7 + [","] * 9 + ["."] * 9
OTHER_WORDS = "protein kinase receptor binding tumour cells expression gene mutation patients dose trial".split()


def write_lines(path, words, seed=0, per_line=6):
    words = list(words)
    random.Random(seed).shuffle(words)
    path.write_text("\n".join(" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line)) + "\n")
    return str(path)


def counts_of(path):
    return sample_corpus(path, ReadOptions()).counts


def test_overlap_of_hand_made_corpora(tmp_path):
    source = counts_of(write_lines(tmp_path / "s.txt", SOURCE + NOISE))
    target = counts_of(write_lines(tmp_path / "t.txt", TARGET + NOISE, seed=1))
    # top 3: {alpha, beta, gamma} and {gamma, omega, alpha}
    assert vocabulary_overlap(source, target, k=3) == (pytest.approx(2 / 3), 3)
    # k shrinks to the 4 content words each side has: {alpha, beta, gamma, delta} ∩ {gamma, omega, alpha, beta}
    assert vocabulary_overlap(source, target) == (pytest.approx(3 / 4), 4)


def test_fertility_and_unknown_rate_of_a_hand_made_tokenizer():
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, "the", "cat", "##s", "sat", "on", "mat", "."])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # "the cat ##s sat ." and "the <unk> sat on the mat": 11 tokens for 10 words and marks, one unknown
    sample = tokenize_sample(tokenizer, ["the cats sat.", "the dog sat on the mat"])
    assert sample.fertility == pytest.approx(11 / 10)
    assert sample.unknown_rate == pytest.approx(1 / 11)
    assert len(sample.tokens) == 11 + 2  # an end-of-document token after each


def test_identical_corpora_match(tmp_path, tiny_decoder):
    corpus = str(make_corpus(tmp_path / "c.txt", documents=120))
    result = measure_mismatch(corpus, corpus, tiny_decoder)
    assert result.overlap == 1.0
    assert result.mmd == pytest.approx(0.0, abs=1e-6)
    assert result.proxy_a_distance is not None and result.proxy_a_distance < 0.5
    assert result.perplexity is not None and result.perplexity[0] == result.perplexity[1]
    assert result.perplexity_kind == "next-token"
    assert result.forecast is not None and result.forecast.verdict != "continue"
    bag = measure_mismatch(corpus, corpus)  # no checkpoint: the distances on bags of n-grams
    assert bag.mmd == pytest.approx(0.0, abs=1e-6) and bag.perplexity is None
    assert bag.forecast is not None and bag.forecast.clamped_to is None  # overlap 1: the measured control's


def test_disjoint_corpora_and_what_the_forecast_says_of_them(tmp_path, tiny_encoder):
    source = str(make_corpus(tmp_path / "s.txt", documents=120))
    target = write_lines(tmp_path / "t.txt", OTHER_WORDS * 60, per_line=10)
    result = measure_mismatch(source, target, tiny_encoder)
    assert result.overlap == 0.0
    assert result.perplexity is not None and all(math.isfinite(p) for p in result.perplexity)
    assert result.perplexity_kind.startswith("masked-LM")
    assert measure_mismatch(source, target, tiny_encoder).perplexity == result.perplexity  # masking is seeded
    assert result.forecast is not None and result.forecast.clamped_to == 0.347  # the least overlap measured

    out = tmp_path / "reports" / "mismatch.md"
    steep = tmp_path / "steep.yaml"  # pairs where adapting paid the more, the less the corpora overlapped
    steep.write_text(yaml.safe_dump([
        {"name": f"p{x}", "adaptation": "DAPT", "task": "F1", "budget": 500, "overlap": x, "gain": 10 - 20 * x,
         "standard_error": 0.2, "seeds": 5} for x in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    ]))  # fmt: skip
    api.mismatch(source, target, out=out, pairs=steep)
    report = out.read_text()
    assert "Continue pretraining on the target domain" in report and "vocabulary overlap 0.00" in report
    assert "## What the forecast rests on" in report and "NCBI-disease" in report
    assert "fertility" not in report.split("## Recommendation")[0]  # not measured without a checkpoint


def test_errors_are_one_line(tmp_path):
    corpus = str(make_corpus(tmp_path / "c.txt", documents=20))
    missing = str(tmp_path / "missing.txt")
    assert_one_line_error(headstart("mismatch", missing, corpus), missing, "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    assert_one_line_error(headstart("mismatch", corpus, str(empty)), str(empty), "no documents")
    assert_one_line_error(
        headstart("mismatch", corpus, corpus, "--checkpoint", str(tmp_path)), "expected a checkpoint directory"
    )
