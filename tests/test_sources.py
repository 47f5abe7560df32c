"""Reading inputs into documents: every input kind, the text modes, and bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from headstart.data.sources import (
    ReadOptions,
    SkipLog,
    describe_sources,
    file_sha256,
    read_documents,
    resolve_inputs,
)
from headstart.data.stdlib_corpus import (
    iter_stdlib_docstrings,
    iter_stdlib_files,
    stdlib_root,
    write_stdlib_corpus,
)
from headstart.errors import HeadstartError


def _read(inputs: list[str], skips: SkipLog | None = None, **options: str) -> list[str]:
    return list(read_documents(inputs, ReadOptions(**options), skips))  # type: ignore[arg-type]


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_line_mode_skips_and_counts_empty_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfone\n\n  \ntwo\r\nthree")
    skips = SkipLog()
    assert _read([str(f)], skips) == ["one", "two", "three"]
    assert skips.counts == {"empty": 2}
    assert skips.examples["empty"] == [f"{f}:2", f"{f}:3"]
    assert skips.lines() == [f"empty: 2 (e.g. {f}:2, {f}:3)"]


def test_block_mode_splits_on_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("first line\nsecond line\n\n \t\n  indented block\n\nlast\n", encoding="utf-8")
    assert _read([str(f)], text_mode="block") == ["first line\nsecond line", "  indented block", "last"]


def test_file_mode_keeps_each_file_whole(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("B\n\nmore B\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("A\r\n", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    skips = SkipLog()
    assert _read([str(tmp_path)], skips, text_mode="file") == ["A\r\n", "B\n\nmore B\n"]
    assert skips.counts == {"empty": 1}


def test_gzip_by_inner_suffix(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "x.txt.gz", "wt", encoding="utf-8") as f:
        f.write("alpha\nbeta\n")
    with gzip.open(tmp_path / "y.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "gamma"}) + "\n")
    assert _read([str(tmp_path / "x.txt.gz"), str(tmp_path / "y.jsonl.gz")]) == ["alpha", "beta", "gamma"]


def test_glob_and_directory_are_sorted_and_recursive(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.txt").write_text("b\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "sub" / "c.py").write_text("c = 1\n", encoding="utf-8")
    (tmp_path / ".hidden" / "h.txt").write_text("hidden\n", encoding="utf-8")
    (tmp_path / "meta.json").write_text('{"text": "not a corpus"}\n', encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    skips = SkipLog()
    assert _read([str(tmp_path)], skips) == ["a", "b", "c = 1"]
    assert skips.counts == {"file ignored (unknown suffix)": 2}
    assert _read([str(tmp_path / "*.txt")]) == ["a", "b"]
    assert _read([str(tmp_path / "**" / "*.py")]) == ["c = 1"]
    # the same file twice (a glob and the file) is read once
    assert _read([str(tmp_path / "*.txt"), str(tmp_path / "a.txt")]) == ["a", "b"]


def test_missing_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(HeadstartError, match=r"nope\.txt: no such file"):
        resolve_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(HeadstartError, match="glob matches no files"):
        resolve_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(HeadstartError, match="holds no files ending in"):
        resolve_inputs([str(tmp_path)])
    with pytest.raises(HeadstartError, match="none given"):
        resolve_inputs([])


@pytest.mark.parametrize("mode", ["line", "block", "file"])
def test_invalid_utf8_skip_counts_the_record(tmp_path: Path, mode: str) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"good\n\nbad \xff here\n\nfine\n")
    skips = SkipLog()
    docs = _read([str(f)], skips, text_mode=mode)
    assert skips.counts["invalid UTF-8"] == 1
    assert skips.examples["invalid UTF-8"] == [f"{f}:3"]
    assert docs == {"line": ["good", "fine"], "block": ["good", "fine"], "file": []}[mode]


def test_invalid_utf8_fail_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"good\nbad \xff here\n")
    for mode in ("line", "file"):
        with pytest.raises(HeadstartError, match=r"a\.txt:2: invalid UTF-8 \(byte 0xff\)"):
            _read([str(f)], text_mode=mode, invalid_utf8="fail")


def test_jsonl_field_missing_and_non_string(tmp_path: Path) -> None:
    f = _jsonl(
        tmp_path / "a.jsonl",
        [{"body": "one", "n": 1}, {"n": 2}, {"body": 3}, {"body": None}, {"body": "  "}, {"body": "日本"}],
    )
    skips = SkipLog()
    assert _read([str(f)], skips, jsonl_field="body") == ["one", "日本"]
    assert skips.counts == {
        "missing field 'body'": 1,
        "field 'body' is not a string (number)": 1,
        "field 'body' is not a string (null)": 1,
        "empty": 1,
    }
    assert skips.examples["missing field 'body'"] == [f"{f}:2"]


def test_jsonl_word_lists_are_joined_and_mixed_lists_skipped(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "a.jsonl", [{"tokens": ["Aspirin", "helps", "."]}, {"tokens": ["a", 1]}])
    skips = SkipLog()
    assert _read([str(f)], skips, jsonl_field="tokens") == ["Aspirin helps ."]
    assert skips.counts == {"field 'tokens' is not a string (array)": 1}


def test_jsonl_several_fields_give_a_document_each(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "pairs.jsonl", [{"src": "a cat", "tgt": "eine Katze"}, {"src": "a dog"}])
    skips = SkipLog()
    assert _read([str(f)], skips, jsonl_field="src,tgt") == ["a cat", "eine Katze", "a dog"]
    assert skips.counts == {"missing field 'tgt'": 1}


def test_jsonl_field_no_record_has_is_an_error(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "a.jsonl", [{"content": "x"}, {"content": "y"}])
    with pytest.raises(HeadstartError, match=r"no record has the field 'text' \(the first has: content\)"):
        _read([str(f)])


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "ok"}\n\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(HeadstartError, match=r"a\.jsonl:3: malformed JSON"):
        _read([str(f)])
    f.write_text('{"text": "ok"}\n["a list"]\n', encoding="utf-8")
    with pytest.raises(HeadstartError, match=r"a\.jsonl:2: expected a JSON object per line, got a JSON array"):
        _read([str(f)])


def test_parquet_column_in_batches(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"row {i}" for i in range(2500)]
    texts[7] = None
    table = pa.table({"id": list(range(2500)), "content": texts})
    f = tmp_path / "t.parquet"
    pq.write_table(table, f, row_group_size=1000)
    skips = SkipLog()
    docs = _read([str(f)], skips, parquet_column="content")
    assert len(docs) == 2499 and docs[0] == "row 0" and docs[-1] == "row 2499"
    assert skips.examples == {"field 'content' is not a string (null)": [f"{f} row 7"]}
    with pytest.raises(HeadstartError, match=r"no column 'text' \(columns: id, content\)"):
        _read([str(f)])
    with pytest.raises(HeadstartError, match="column 'id' has type int64; expected string"):
        _read([str(f)], parquet_column="id")


def test_hf_saved_dataset_and_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["first", "", "second"], "label": [0, 1, 0]})
    ds.save_to_disk(str(tmp_path / "plain"))
    skips = SkipLog()
    assert _read([f"hf:{tmp_path / 'plain'}"], skips) == ["first", "second"]
    assert skips.counts == {"empty": 1}
    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_dict({"text": ["held out"]})})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert _read([f"hf:{tmp_path / 'dict'}"], hf_split="test") == ["held out"]
    with pytest.raises(HeadstartError, match=r"no split 'valid' \(splits: train, test\)"):
        _read([f"hf:{tmp_path / 'dict'}"], hf_split="valid")
    with pytest.raises(HeadstartError, match=r"no column 'body' \(columns: text, label\)"):
        _read([f"hf:{tmp_path / 'plain'}"], parquet_column="body")
    with pytest.raises(HeadstartError, match="a saved Hugging Face dataset; expected it as hf:"):
        _read([str(tmp_path / "plain")])


def test_sha256_and_source_description(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"x" * 3_000_000)
    assert file_sha256(f, chunk=1 << 16) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    (entry,) = describe_sources(resolve_inputs([str(f)]), "train")
    assert entry == {
        "path": str(f),
        "kind": "text",
        "split": "train",
        "bytes": 3_000_000,
        "sha256": file_sha256(f),
    }


def test_stdlib_files_are_sorted_library_code() -> None:
    files = list(iter_stdlib_files())
    root = stdlib_root()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert "json/decoder.py" in rel and "os.py" in rel
    assert not [r for r in rel if {"test", "tests", "idlelib", "site-packages"} & set(r.split("/"))]
    assert [f.name for f in iter_stdlib_files(packages=["json"])] == [
        "__init__.py",
        "decoder.py",
        "encoder.py",
        "scanner.py",
        "tool.py",
    ]


def test_stdlib_docstrings_name_package_module_and_object(tmp_path: Path) -> None:
    records = list(iter_stdlib_docstrings(packages=["json"]))
    by_name = {(r["module"], r["name"]): r for r in records}
    assert by_name[("json.decoder", "JSONDecoder.decode")]["package"] == "json"
    assert by_name[("json", "")]["text"].startswith("JSON (JavaScript Object Notation)")
    path = write_stdlib_corpus(tmp_path / "corpus", "docstrings", packages=["json"])
    assert path.name == "stdlib_docstrings.jsonl"
    assert _read([str(path)]) == [r["text"] for r in records]
    sources = write_stdlib_corpus(tmp_path / "corpus", "source", packages=["json"])
    (first, *_) = read_documents([str(sources)])
    assert first == (stdlib_root() / "json" / "__init__.py").read_text(encoding="utf-8")
