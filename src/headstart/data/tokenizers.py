"""Train, save, load and describe tokenizers (Hugging Face ``tokenizers``), and encode documents.

Four kinds, all sharing the same six special tokens at ids 0-5 (``SPECIAL_TOKENS``):

* ``bpe``: byte-level BPE (GPT-2 style, no prefix space). Lossless on any UTF-8.
* ``unigram``: a Unigram LM over the same byte-level symbols. Lossless on any UTF-8 without
  byte fallback, and (unlike Metaspace) it cannot confuse a literal ``▁`` with a space.
* ``char``: every character seen in training is one token; anything else is spelled with
  ``<0xNN>`` byte-fallback tokens; no merges. ``vocab_size`` is ignored: the vocabulary is
  6 specials + 256 bytes + the alphabet seen. Lossless.
* ``wordpiece``: BERT-style. NOT lossless: whitespace collapses, unknown characters become
  ``<unk>``, and ``lowercase`` folds case; ``decode(encode(s))`` matches ``s`` up to whitespace.

Text never turns into control tokens: a literal ``<mask>`` in a document is encoded as text
(``encode_special_tokens`` is switched on by ``train_tokenizer`` and ``load_tokenizer``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from headstart.config import TokenizerConfig
from headstart.errors import HeadstartError

EOD, PAD, MASK, UNK, CLS, SEP = "<|endoftext|>", "<pad>", "<mask>", "<unk>", "<cls>", "<sep>"
SPECIAL_TOKENS = (EOD, PAD, MASK, UNK, CLS, SEP)  # EOD ends every document and doubles as BOS
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # the char kind's byte fallback, ids 6-261
_BYTE_TOKEN_SET = frozenset(BYTE_TOKENS)
MIN_VOCAB = len(SPECIAL_TOKENS) + 256
_WHITESPACE_BYTES = frozenset(b" \t\n\r\x0b\x0c")


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: char -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


BYTE_LEVEL = _byte_level_chars()


# ----------------------------------------------------------------------------- training


def train_tokenizer(docs: Iterable[str] | Iterable[list[str]], cfg: TokenizerConfig) -> Tokenizer:
    """Train a ``cfg.kind`` tokenizer on documents (or batches of them), streaming."""
    if cfg.kind in ("bpe", "unigram") and cfg.vocab_size < MIN_VOCAB:
        raise HeadstartError(
            f"tokenizer.vocab_size={cfg.vocab_size}: expected at least {MIN_VOCAB} for {cfg.kind} "
            "(256 bytes + 6 special tokens)"
        )
    if cfg.kind == "wordpiece" and cfg.vocab_size <= len(SPECIAL_TOKENS):
        raise HeadstartError(f"tokenizer.vocab_size={cfg.vocab_size}: expected more than {len(SPECIAL_TOKENS)}")
    if cfg.kind == "char":
        tok = _char_tokenizer(docs)
    else:
        tok = _subword_tokenizer(cfg)
        tok.train_from_iterator(docs, _trainer(cfg))
    tok.encode_special_tokens = True
    return tok


def _subword_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    if cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return tok
    tok = Tokenizer(models.BPE() if cfg.kind == "bpe" else models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _trainer(cfg: TokenizerConfig) -> trainers.Trainer:
    common: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "special_tokens": list(SPECIAL_TOKENS),
        "show_progress": False,
    }
    if cfg.kind == "wordpiece":
        return trainers.WordPieceTrainer(**common)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if cfg.kind == "bpe":
        return trainers.BpeTrainer(initial_alphabet=alphabet, **common)
    return trainers.UnigramTrainer(initial_alphabet=alphabet, unk_token=UNK, **common)


def _char_tokenizer(docs: Iterable[str] | Iterable[list[str]]) -> Tokenizer:
    alphabet: set[str] = set()
    for item in docs:
        for doc in [item] if isinstance(item, str) else item:
            alphabet.update(doc)
    vocab = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *BYTE_TOKENS))}
    for char in sorted(alphabet):
        vocab.setdefault(char, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token=UNK))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


# ----------------------------------------------------------------------------- files


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write the tokenizer as one ``tokenizer.json`` (the format every HF tool reads)."""
    tok.save(str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json``; any of the six special tokens it lacks are appended."""
    p = Path(path)
    if not p.is_file():
        raise HeadstartError(f"tokenizer {path}: no such file; expected a tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # the Rust loader raises a bare Exception
        raise HeadstartError(f"tokenizer {path}: not a Hugging Face tokenizer.json ({exc})") from None
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    tok.encode_special_tokens = True
    return tok


def tokenizer_from_str(text: str) -> Tokenizer:
    """A tokenizer from its JSON text (as ``tok.to_str()`` gives), with text kept as text."""
    tok = Tokenizer.from_str(text)
    tok.encode_special_tokens = True
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON (sorted keys), stable across save/load."""
    canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def tokenizer_kind(tok: Tokenizer) -> str:
    """``bpe``, ``unigram``, ``wordpiece`` or ``char``, read from the tokenizer's model."""
    model = json.loads(tok.to_str())["model"]
    if model["type"] == "BPE" and not model.get("merges") and model.get("byte_fallback"):
        return "char"
    return {"BPE": "bpe", "Unigram": "unigram", "WordPiece": "wordpiece"}.get(model["type"], model["type"].lower())


@dataclass(frozen=True)
class TokenizerInfo:
    """The numbers the rest of headstart needs about a tokenizer."""

    kind: str
    vocab_size: int
    eod_id: int
    pad_id: int
    mask_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    hash: str

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.eod_id, self.pad_id, self.mask_id, self.unk_id, self.cls_id, self.sep_id)


def tokenizer_info(tok: Tokenizer) -> TokenizerInfo:
    ids = []
    for token in SPECIAL_TOKENS:
        i = tok.token_to_id(token)
        if i is None:
            raise HeadstartError(f"tokenizer: no {token} token; load it with load_tokenizer to add it")
        ids.append(i)
    return TokenizerInfo(tokenizer_kind(tok), tok.get_vocab_size(), *ids, hash=tokenizer_hash(tok))


# ----------------------------------------------------------------------------- per-token tables


def _tokens(tok: Tokenizer) -> tuple[list[str], set[int]]:
    """Every token string by id, and the ids of added (special) tokens."""
    size = tok.get_vocab_size()
    strings = [tok.id_to_token(i) or "" for i in range(size)]
    return strings, set(tok.get_added_tokens_decoder())


def word_start(tok: Tokenizer) -> np.ndarray:
    """Per token id: does it begin a new word? (for whole-word masking)

    A word is a word-start token and the non-word-start tokens after it. Byte-level kinds
    (bpe, unigram): the token begins with a whitespace byte (``Ġ`` space, ``Ċ`` newline, ...) or
    ``▁``. WordPiece: the token does not begin with ``##``. Char: the token is whitespace (a
    char or a ``<0xNN>`` byte), so a word is a whitespace char plus the chars after it. Special
    tokens always start a word.
    """
    kind = tokenizer_kind(tok)
    strings, added = _tokens(tok)
    out = np.zeros(len(strings), dtype=bool)
    for i, s in enumerate(strings):
        if i in added or not s:
            out[i] = True
        elif kind == "wordpiece":
            out[i] = not s.startswith("##")
        elif kind == "char":
            out[i] = s.isspace() or (s in _BYTE_TOKEN_SET and int(s[3:5], 16) in _WHITESPACE_BYTES)
        else:
            out[i] = BYTE_LEVEL.get(s[0]) in _WHITESPACE_BYTES or s[0] == "▁"
    return out


def token_bytes(tok: Tokenizer) -> np.ndarray:
    """Per token id: how many UTF-8 bytes of text it stands for (specials: 0).

    ``token_bytes(tok)[ids].sum()`` is the byte length of the decoded text for the lossless
    kinds, and an estimate for WordPiece (which drops spaces) — the denominator of bits per byte.
    """
    kind = tokenizer_kind(tok)
    strings, added = _tokens(tok)
    out = np.zeros(len(strings), dtype=np.int64)
    for i, s in enumerate(strings):
        if i in added:
            continue
        if kind == "wordpiece":
            out[i] = utf8_len(s.removeprefix("##"))
        elif kind == "char":
            out[i] = 1 if s in _BYTE_TOKEN_SET else utf8_len(s)
        elif all(c in BYTE_LEVEL for c in s):
            out[i] = len(s)
        else:
            out[i] = utf8_len(s.replace("▁", " "))
    return out


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8."""
    return len(text.encode("utf-8"))


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (vocab ≤ 65535), else uint32."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


# ----------------------------------------------------------------------------- encoding


def encode_documents(tok: Tokenizer, docs: Sequence[str], eod_id: int) -> list[list[int]]:
    """Token ids per document (one ``encode_batch`` call), each followed by ``eod_id``."""
    out = []
    for enc in tok.encode_batch(list(docs), add_special_tokens=False):
        ids = enc.ids
        ids.append(eod_id)
        out.append(ids)
    return out


def tokenize_documents(tok: Tokenizer, docs: Iterable[str], batch_size: int = 1000) -> np.ndarray:
    """All documents as one in-memory token array with an eod after each (for evaluating raw text)."""
    eod = tok.token_to_id(EOD)
    if eod is None:
        raise HeadstartError(f"tokenizer: no {EOD} token; load it with load_tokenizer to add it")
    dtype = token_dtype(tok.get_vocab_size())
    parts = [np.zeros(0, dtype=dtype)]
    for batch in _batched(docs, batch_size):
        ids = encode_documents(tok, batch, eod)
        parts.append(np.fromiter((t for doc in ids for t in doc), dtype=dtype, count=sum(map(len, ids))))
    return np.concatenate(parts)


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
