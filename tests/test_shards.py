"""Token shards: what the writer writes, what the reader checks, and atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.data.shards import ShardWriter, check_out_dir, open_shards
from headstart.errors import HeadstartError

META = {"tokenizer_hash": "abc", "vocab_size": 100, "eod_id": 0}
TOKENIZER_JSON = '{"fake": "tokenizer"}'


def _write(out: Path, dtype: str = "<u2", fail: bool = False) -> None:
    with ShardWriter(out, np.dtype(dtype)) as w:
        w.write("train", np.array([5, 6, 0, 7, 0]), documents=2, nbytes=3)
        w.write("val", np.array([8, 0]), documents=1, nbytes=1)
        w.write("train", np.array([9, 9, 9, 0]), documents=1, nbytes=3)
        if fail:
            raise RuntimeError("crash mid-write")
        w.commit(TOKENIZER_JSON, META)


def test_written_shards_match_meta(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _write(out)
    shards = open_shards(out)
    assert shards.train.dtype == np.dtype("<u2")
    assert shards.train.tolist() == [5, 6, 0, 7, 0, 9, 9, 9, 0]
    assert shards.split("val").tolist() == [8, 0]
    assert (out / "train.bin").stat().st_size == 9 * 2
    assert shards.meta["splits"] == {
        "train": {"tokens": 9, "documents": 3, "bytes": 6},
        "val": {"tokens": 2, "documents": 1, "bytes": 1},
    }
    assert shards.meta["format_version"] == 1 and shards.meta["dtype"] == "uint16"
    assert (shards.vocab_size, shards.eod_id, shards.tokenizer_hash) == (100, 0, "abc")
    assert shards.tokenizer_path.read_text(encoding="utf-8") == TOKENIZER_JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
    assert [d.tolist() for d in shards.documents("train")] == [[5, 6], [7], [9, 9, 9]]
    assert [d.tolist() for d in shards.documents("train", min_tokens=2)] == [[5, 6], [9, 9, 9]]


def test_uint32_shards(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "s", np.dtype("<u4")) as w:
        w.write("train", np.array([70000, 0]), documents=1, nbytes=4)
        w.commit(TOKENIZER_JSON, META | {"vocab_size": 70001})
    shards = open_shards(tmp_path / "s")
    assert shards.train.tolist() == [70000, 0] and shards.val.size == 0
    assert (tmp_path / "s" / "train.bin").read_bytes() == np.array([70000, 0], dtype="<u4").tobytes()


def test_move_tail_splits_tokens_documents_and_bytes(tmp_path: Path) -> None:
    per_token_bytes = np.array([0, 1, 2, 3])  # id 0 is eod
    with ShardWriter(tmp_path / "s", np.dtype("<u2")) as w:
        w.write("train", np.array([1, 2, 0, 3, 3, 1, 0, 2, 0]), documents=3, nbytes=12)
        w.move_tail(5, eod_id=0, token_bytes=per_token_bytes)  # cuts the second document
        w.commit(TOKENIZER_JSON, META)
    shards = open_shards(tmp_path / "s")
    assert shards.train.tolist() == [1, 2, 0, 3]
    assert shards.val.tolist() == [3, 1, 0, 2, 0]
    assert shards.meta["splits"] == {
        "train": {"tokens": 4, "documents": 2, "bytes": 6},
        "val": {"tokens": 5, "documents": 2, "bytes": 6},
    }


def test_truncated_shard_is_an_error_naming_sizes(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _write(out)
    with open(out / "train.bin", "r+b") as f:
        f.truncate(7)
    with pytest.raises(HeadstartError, match=r"train\.bin: expected 18 bytes \(9 uint16 tokens.*found 7 bytes"):
        open_shards(out)
    (out / "val.bin").unlink()
    (out / "train.bin").write_bytes(b"\0" * 18)
    with pytest.raises(HeadstartError, match=r"val\.bin: expected 4 bytes .* it is missing"):
        open_shards(out)


def test_missing_or_unknown_shards_are_errors(tmp_path: Path) -> None:
    with pytest.raises(HeadstartError, match="no such directory"):
        open_shards(tmp_path / "none")
    with pytest.raises(HeadstartError, match=r"no meta\.json"):
        open_shards(tmp_path)
    out = tmp_path / "shards"
    _write(out)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    (out / "meta.json").write_text(json.dumps(meta | {"format_version": 99}), encoding="utf-8")
    with pytest.raises(HeadstartError, match="version 99; this headstart reads headstart-token-shards version 1"):
        open_shards(out)
    (out / "meta.json").write_text("{}", encoding="utf-8")
    with pytest.raises(HeadstartError, match="unreadable or incomplete"):
        open_shards(out)


def test_failed_write_keeps_previous_shards_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="crash mid-write"):
        _write(out, dtype="<u4", fail=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]
    _write(out, dtype="<u4")  # a complete write replaces it
    assert open_shards(out).meta["dtype"] == "uint32"
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]


def test_out_dir_must_be_new_empty_or_shards(tmp_path: Path) -> None:
    check_out_dir(tmp_path / "new")
    check_out_dir(tmp_path)  # empty
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(HeadstartError, match="exists and is not a shard directory"):
        check_out_dir(tmp_path)
    with pytest.raises(HeadstartError, match="is a file"):
        check_out_dir(tmp_path / "notes.txt")
    with pytest.raises(HeadstartError, match="not a shard directory"), ShardWriter(tmp_path, np.dtype("<u2")):
        pass
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
