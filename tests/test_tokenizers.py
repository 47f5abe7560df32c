"""Tokenizers: lossless round-trips, the shared special tokens, word starts, byte counts, files."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from headstart.config import TokenizerConfig
from headstart.data.tokenizers import (
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    token_bytes,
    token_dtype,
    tokenize_documents,
    tokenizer_hash,
    tokenizer_info,
    train_tokenizer,
    word_start,
)
from headstart.errors import HeadstartError

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer should round-trip every string, even odd ones.",
    "Numbers 12345 and punctuation: (a, b); c!",
    "Café naïve résumé — unicode in training text.",
    "def f(x):\n    return x * 2\n",
] * 20

NASTY = [
    "",
    " ",
    "  two  spaces  ",
    "tabs\tand\t\ttabs",
    "new\nlines\n\n\nand\r\nCRLF\rCR",
    "emoji 👩‍👩‍👧‍👦 🎉🙂",
    "中文字符 日本語 한국어",
    "e\u0301 combining a\u0308 marks \u0301",
    "zero\u200bwidth\ufeffbom",
    "▁ lower block ▁▁",
    "Ġ Ċ byte-level look-alikes",
    "<mask> <|endoftext|> <pad> literal specials",
    "<0x41> fake byte token",
    "\x00\x01\x7f controls",
    "\U0010ffff\ue000 private use",
    "right-to-left עברית العربية",
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.3:
                chars.append(rng.choice(" \t\n\r  ab"))
            else:
                code = rng.randint(0, 0x10FFFF)
                chars.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "x")
        out.append("".join(chars))
    return out


@cache
def _trained(kind: str) -> Tokenizer:
    return train_tokenizer(iter(CORPUS), TokenizerConfig(kind=kind, vocab_size=400))


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_round_trip_is_exact_on_arbitrary_utf8(kind: str) -> None:
    tok = _trained(kind)
    unk = tokenizer_info(tok).unk_id
    nbytes = token_bytes(tok)
    for text in NASTY + _random_strings(300):
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, repr(text)
        assert unk not in ids
        assert int(nbytes[ids].sum()) == len(text.encode("utf-8")), repr(text)


def test_wordpiece_round_trips_up_to_whitespace() -> None:
    tok = _trained("wordpiece")
    for text in CORPUS[:5]:
        decoded = tok.decode(tok.encode(text).ids)
        assert decoded.split() != [] and "".join(decoded.split()) == "".join(text.split())
    lower = train_tokenizer(iter(CORPUS), TokenizerConfig(kind="wordpiece", vocab_size=400, lowercase=True))
    assert lower.decode(lower.encode("The FOX").ids) == "the fox"


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char", "wordpiece"])
def test_special_tokens_are_shared_and_text_stays_text(kind: str) -> None:
    tok = _trained(kind)
    info = tokenizer_info(tok)
    assert info.kind == kind
    assert info.special_ids == (0, 1, 2, 3, 4, 5)
    assert [tok.id_to_token(i) for i in info.special_ids] == list(SPECIAL_TOKENS)
    ids = tok.encode("a <mask> b <|endoftext|>").ids
    assert info.mask_id not in ids and info.eod_id not in ids


def test_char_vocab_is_alphabet_plus_bytes_plus_specials() -> None:
    tok = train_tokenizer(iter(["abc", "cab\n"]), TokenizerConfig(kind="char", vocab_size=10))
    assert tok.get_vocab_size() == 6 + 256 + 4
    assert tok.encode("abc\n").tokens == ["a", "b", "c", "\n"]
    assert tok.encode("é").tokens == ["<0xC3>", "<0xA9>"]


def test_word_start_per_kind() -> None:
    bpe = _trained("bpe")
    ids = bpe.encode("The quick brown fox").ids
    starts = word_start(bpe)[ids]
    assert int(starts.sum()) == 3 and not starts[0]  # ' quick', ' brown', ' fox'; no prefix space
    uni = _trained("unigram")
    assert int(word_start(uni)[uni.encode("the lazy dog").ids].sum()) == 2
    wp = _trained("wordpiece")
    enc = wp.encode("quick tokenizer")
    assert [t.startswith("##") for t in enc.tokens] == list(~word_start(wp)[enc.ids])
    char = _trained("char")
    ids = char.encode("ab cd\tef").ids
    assert list(word_start(char)[ids]) == [False, False, True, False, False, True, False, False]
    for tok in (bpe, uni, wp, char):
        assert word_start(tok)[list(tokenizer_info(tok).special_ids)].all()


def test_save_load_keeps_hash_and_behaviour(tmp_path: Path) -> None:
    tok = _trained("bpe")
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer_hash(again) == tokenizer_hash(tok) == tokenizer_info(tok).hash
    assert again.encode("x <mask> y").ids == tok.encode("x <mask> y").ids
    assert tokenizer_hash(_trained("unigram")) != tokenizer_hash(tok)


def test_load_adds_missing_special_tokens_to_a_foreign_tokenizer(tmp_path: Path) -> None:
    foreign = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    info = tokenizer_info(tok)
    assert info.vocab_size == 8 and info.eod_id == 2 and info.sep_id == 7


def test_bad_tokenizer_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(HeadstartError, match="no such file"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HeadstartError, match=r"not a Hugging Face tokenizer\.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(HeadstartError, match=r"vocab_size=100: expected at least 262"):
        train_tokenizer(iter(CORPUS), TokenizerConfig(kind="bpe", vocab_size=100))


def test_tokenize_documents_appends_eod() -> None:
    tok = _trained("char")
    arr = tokenize_documents(tok, iter(["ab", "c", "a"]), batch_size=2)
    assert arr.dtype == np.uint16
    assert arr.tolist() == [*tok.encode("ab").ids, 0, *tok.encode("c").ids, 0, *tok.encode("a").ids, 0]
    assert tokenize_documents(tok, iter([])).size == 0


def test_token_dtype_widens_past_uint16() -> None:
    assert token_dtype(65535) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u4")
