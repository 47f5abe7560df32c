"""prepare: inputs -> tokenizer -> shards, end to end on tiny corpora."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from headstart.config import PrepareConfig, TokenizerConfig
from headstart.data import prepare as prepare_module
from headstart.data.prepare import prepare, val_mask
from headstart.data.shards import open_shards
from headstart.data.tokenizers import load_tokenizer
from headstart.errors import HeadstartError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "mu", "café", "日本"]


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 30))) for _ in range(n)]


def _jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def _cfg(inputs: list[Path], out: Path, **kw: object) -> PrepareConfig:
    kw = {"workers": 1, "tokenizer": TokenizerConfig(kind="bpe", vocab_size=300)} | kw
    return PrepareConfig(inputs=[str(p) for p in inputs], out=str(out), **kw)  # type: ignore[arg-type]


def _split_docs(tokens: np.ndarray, tok_path: Path) -> list[str]:
    tok = load_tokenizer(tok_path)
    ids = tokens.tolist()
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == 0:
            docs.append(tok.decode(ids[start:i]))
            start = i + 1
    return docs


def test_documents_split_counts_and_contents(tmp_path: Path) -> None:
    docs = _docs(400)
    src = _jsonl(tmp_path / "corpus.jsonl", [*docs[:200], " ", *docs[200:]])
    report = prepare(_cfg([src], tmp_path / "out", val_fraction=0.1))
    shards = open_shards(tmp_path / "out")
    is_val = val_mask(np.arange(400), 0.1)
    want_val = [d for d, v in zip(docs, is_val, strict=True) if v]
    want_train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    assert 20 < len(want_val) < 60
    assert _split_docs(shards.train, shards.tokenizer_path) == want_train
    assert _split_docs(shards.val, shards.tokenizer_path) == want_val
    splits = shards.meta["splits"]
    assert splits["train"]["documents"] == len(want_train) and splits["val"]["documents"] == len(want_val)
    assert splits["train"]["tokens"] == shards.train.size and splits["val"]["tokens"] == shards.val.size
    assert splits["val"]["bytes"] == sum(len(d.encode()) for d in want_val)
    assert shards.meta["skipped"]["reasons"] == {"empty": 1}
    assert shards.meta["sources"][0]["sha256"] and shards.meta["sources"][0]["bytes"] == src.stat().st_size
    assert shards.meta["prepare_config"]["val_fraction"] == 0.1
    assert shards.tokenizer_hash == report.tokenizer.hash and report.tokens == {
        "train": shards.train.size,
        "val": shards.val.size,
    }
    assert report.documents["train"] == len(want_train) and report.tokens_per_s > 0


def test_worker_count_does_not_change_the_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "CHUNK_DOCS", 16)  # many chunks in flight at once
    src = _jsonl(tmp_path / "corpus.jsonl", _docs(600))
    prepare(_cfg([src], tmp_path / "one", workers=1))
    prepare(_cfg([src], tmp_path / "two", workers=2))
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    meta = [open_shards(tmp_path / d).meta for d in ("one", "two")]
    assert meta[0]["splits"] == meta[1]["splits"] and meta[0]["tokenizer_hash"] == meta[1]["tokenizer_hash"]


def test_tail_split_takes_exactly_the_last_tokens(tmp_path: Path) -> None:
    for i, doc in enumerate(_docs(3, seed=1)):
        (tmp_path / f"{i}.txt").write_text(doc * 5 + "\n", encoding="utf-8")
    files = sorted(tmp_path.glob("*.txt"))
    char = TokenizerConfig(kind="char")
    whole = prepare(_cfg(files, tmp_path / "all", text_mode="file", val_fraction=0.0, tokenizer=char))
    tail = prepare(_cfg(files, tmp_path / "tail", text_mode="file", val_mode="tail", val_fraction=0.25, tokenizer=char))
    everything = open_shards(tmp_path / "all").train
    shards = open_shards(tmp_path / "tail")
    total = everything.size
    assert shards.val.size == total - int(total * 0.75)
    assert np.array_equal(np.concatenate([shards.train, shards.val]), everything)
    train, val = tail.splits["train"], tail.splits["val"]
    assert train.bytes + val.bytes == whole.splits["train"].bytes == sum(f.stat().st_size for f in files)
    tok = load_tokenizer(shards.tokenizer_path)
    assert val.bytes == len(tok.decode(shards.val.tolist()).encode())
    cut = shards.train[-1] != 0
    assert val.documents == int((shards.val == 0).sum()) and train.documents == 3 - val.documents + cut


def test_val_inputs_and_a_given_tokenizer(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "train.jsonl", _docs(50))
    held = tmp_path / "valid.txt"
    held.write_text("alpha beta\ngamma\n", encoding="utf-8")
    first = prepare(_cfg([src], tmp_path / "a", val_inputs=[str(held)]))
    shards = open_shards(tmp_path / "a")
    assert shards.meta["val_mode"] == "inputs"
    assert _split_docs(shards.val, shards.tokenizer_path) == ["alpha beta", "gamma"]
    assert first.splits["train"].documents == 50
    assert [s["split"] for s in shards.meta["sources"]] == ["train", "val"]
    reuse = TokenizerConfig(path=str(shards.tokenizer_path), kind="char")
    again = prepare(_cfg([src], tmp_path / "b", val_inputs=[str(held)], tokenizer=reuse))
    assert again.tokenizer.hash == first.tokenizer.hash
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


@pytest.mark.parametrize("given_tokenizer", [False, True])
def test_empty_corpus_is_an_error_and_writes_nothing(tmp_path: Path, given_tokenizer: bool) -> None:
    src = tmp_path / "blank.txt"
    src.write_bytes(b"\n  \n\xff\n")
    tokenizer = TokenizerConfig(kind="char")
    if given_tokenizer:
        good = _jsonl(tmp_path / "good.jsonl", _docs(20))
        prepare(_cfg([good], tmp_path / "ref", val_fraction=0.0, tokenizer=tokenizer))
        tokenizer = TokenizerConfig(path=str(tmp_path / "ref" / "tokenizer.json"))
    with pytest.raises(HeadstartError, match=r"blank\.txt: no documents to prepare \(empty: 2; invalid UTF-8: 1\)"):
        prepare(_cfg([src], tmp_path / "out", tokenizer=tokenizer))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_every_record_missing_the_field_names_it(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('{"body": "x"}\n{"body": "y"}\n', encoding="utf-8")
    with pytest.raises(HeadstartError, match="no record has the field 'text'"):
        prepare(_cfg([src], tmp_path / "out"))


def test_too_small_for_val_fraction_is_explained(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "c.jsonl", _docs(3))
    assert not val_mask(np.arange(3), 0.05).any()
    with pytest.raises(HeadstartError, match=r"val split is empty: corpus too small for val_fraction=0\.05"):
        prepare(_cfg([src], tmp_path / "out", val_fraction=0.05))
    assert not (tmp_path / "out").exists()
    with pytest.raises(HeadstartError, match=r"val_fraction=1\.0: expected 0 <= val_fraction < 1"):
        prepare(_cfg([src], tmp_path / "out", val_fraction=1.0))


def test_failed_prepare_keeps_previous_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _jsonl(tmp_path / "c.jsonl", _docs(100))
    prepare(_cfg([src], tmp_path / "out"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def boom(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(prepare_module, "describe_sources", boom)
    with pytest.raises(OSError, match="disk on fire"):
        prepare(_cfg([src], tmp_path / "out", val_fraction=0.5))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "out"]


def test_console_report_lists_splits_and_skip_reasons(tmp_path: Path) -> None:
    src = tmp_path / "c.txt"
    src.write_text("\n".join(_docs(40)) + "\n\n\n", encoding="utf-8")
    console = Console(record=True, width=200)
    prepare(_cfg([src], tmp_path / "out", val_fraction=0.2), console=console)
    text = console.export_text()
    assert "train" in text and "val" in text and "tokens/s" in text
    assert f"empty: 2 (e.g. {src}:41, {src}:42)" in text


@pytest.mark.slow
def test_tiny_shakespeare_char_tail(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "text" / "tinyshakespeare" / "input.txt"
    cfg = _cfg(
        [src],
        tmp_path / "out",
        text_mode="file",
        val_mode="tail",
        val_fraction=0.1,
        tokenizer=TokenizerConfig(kind="char"),
    )
    report = prepare(cfg)
    shards = open_shards(tmp_path / "out")
    assert report.tokenizer.vocab_size == 65 + 256 + 6  # 65 characters
    total = 1_115_394 + 1  # every character, then the eod
    assert shards.train.size == int(total * 0.9) == 1_003_855
    assert shards.val.size == total - 1_003_855 == 111_540
    assert report.splits["train"].bytes == 1_003_855 and report.splits["val"].bytes == 111_539
    assert shards.val[-1] == report.tokenizer.eod_id and (shards.train != report.tokenizer.eod_id).all()
