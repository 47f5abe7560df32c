"""Extend a trained tokenizer with a domain's frequent words, keeping every old token id.

A checkpoint's tokenizer splits the words of a new domain into many pieces (its fertility
rises). Continued pretraining can add the domain's most frequent split words as tokens of
their own: each new token gets the next free id, so every old id and the checkpoint's
embedding row behind it stay where they were, and only the new rows need a start, the mean of
the pieces each new token stands for (``new_token_pieces``).

BPE grows by merges (a word of pieces p1…pk adds the merges p1+p2, p1p2+p3, …, ranked after
every existing merge), WordPiece and Unigram by whole-word entries.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer

from headstart.data.tokenizers import tokenizer_from_str, tokenizer_kind
from headstart.errors import HeadstartError


def word_counts(tok: Tokenizer, documents: Iterable[str]) -> Counter[str]:
    """Words as the tokenizer's model sees them: normalised and pre-tokenized (``Ġword`` for byte-level)."""
    counts: Counter[str] = Counter()
    for document in documents:
        text = tok.normalizer.normalize_str(document) if tok.normalizer else document
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(text))
    return counts


def pieces(tok: Tokenizer, word: str) -> list[str]:
    return [token.value for token in tok.model.tokenize(word)]


def split_words(tok: Tokenizer, counts: Counter[str], count: int) -> list[tuple[str, list[str]]]:
    """The ``count`` words whose splitting costs the most: occurrences × (extra pieces + unknown
    pieces, whose meaning is lost outright)."""
    unknown = getattr(tok.model, "unk_token", None)
    scored = []
    for word, seen in counts.items():
        split = pieces(tok, word)
        cost = len(split) - 1 + sum(piece == unknown for piece in split)
        if cost > 0:
            scored.append((seen * cost, word, split))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [(word, split) for _, word, split in scored[:count]]


def extend_tokenizer(tok: Tokenizer, documents: Iterable[str], count: int) -> Tokenizer:
    """``tok`` with up to ``count`` new tokens for the documents' most costly split words."""
    kind = tokenizer_kind(tok)
    if kind == "char":
        raise HeadstartError("tokenizer.extend: a char tokenizer has no words to add; use bpe, wordpiece or unigram")
    spec = json.loads(tok.to_str())
    model = spec["model"]
    next_id = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    known = set(tok.get_vocab(with_added_tokens=True))
    added: list[str] = []
    scores = dict(model["vocab"]) if kind == "unigram" else {}  # piece → log-probability
    for word, split in split_words(tok, word_counts(tok, documents), count):
        if len(added) >= count:
            break
        if kind == "bpe":
            pairs = model["merges"]
            as_text = bool(pairs) and isinstance(pairs[0], str)  # older files: "a b"; newer: ["a", "b"]
            current = split[0]
            for piece in split[1:]:
                merged = current + piece
                if merged not in known and len(added) < count:
                    pairs.append(f"{current} {piece}" if as_text else [current, piece])
                    model["vocab"][merged] = next_id + len(added)
                    known.add(merged)
                    added.append(merged)
                current = merged
        elif word not in known:
            if kind == "wordpiece":
                model["vocab"][word] = next_id + len(added)
            else:  # unigram: as likely as an average piece of the word, so the whole word wins
                model["vocab"].append([word, sum(scores[p] for p in split) / len(split)])
            known.add(word)
            added.append(word)
    return tokenizer_from_str(json.dumps(spec))


def check_extends(old: Tokenizer, new: Tokenizer, source: str) -> None:
    """``new`` must keep every token of ``old`` at the same id (and only add after them)."""
    new_vocab = new.get_vocab(with_added_tokens=True)
    for token, index in old.get_vocab(with_added_tokens=True).items():
        if new_vocab.get(token) != index:
            raise HeadstartError(
                f"{source}: its tokenizer is neither the checkpoint's nor an extension of it (token {token!r} has "
                f"id {index} in the checkpoint's, {new_vocab.get(token)} here); prepare the data with "
                "tokenizer.path=CHECKPOINT/tokenizer.json (and tokenizer.extend to add domain words)"
            )


def new_token_pieces(old: Tokenizer, new: Tokenizer) -> dict[int, list[int]]:
    """Each token ``new`` adds, by id → the ids of the old pieces it stands for."""
    first = old.get_vocab_size(with_added_tokens=True)
    return {
        index: [token.id for token in old.model.tokenize(token_text)]
        for token_text, index in new.get_vocab(with_added_tokens=True).items()
        if index >= first
    }
