import json
import random

import numpy as np
import pytest

from headstart import api
from headstart.data.labelled import read_tagged_jsonl
from headstart.data.tokenizers import load_tokenizer
from headstart.errors import HeadstartError
from headstart.tasks.tag import align

NAMES = ["alice", "bob", "carol"]
PLACES = ["paris", "rome", "oslo"]
FILLER = "the cat sat on a mat while dogs ran far away".split()


def write_ner(path, n, seed):
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            words, tags = [], []
            for _ in range(rng.randint(3, 8)):
                roll = rng.random()
                if roll < 0.15:
                    words += [rng.choice(NAMES), rng.choice(NAMES)]
                    tags += ["B-PER", "I-PER"]
                elif roll < 0.3:
                    words.append(rng.choice(PLACES))
                    tags.append("B-LOC")
                else:
                    words.append(rng.choice(FILLER))
                    tags.append("O")
            handle.write(json.dumps({"tokens": words, "tags": tags}) + "\n")
    return path


def test_alignment_puts_each_word_on_its_first_subword(tiny_shards):
    tokenizer = load_tokenizer(tiny_shards / "tokenizer.json")
    words = ["the", "zebrafishes", "sat", "on", "mats"]
    encoding = tokenizer.encode(" ".join(words), add_special_tokens=False)
    ids, first = align(words, encoding, 0, max_len=64)
    assert first[0] == 1  # position 0 is the start marker
    assert np.all(np.diff(first) > 0)
    pieces = [tokenizer.decode(ids[first[i] : (first[i + 1] if i + 1 < len(words) else len(ids))].tolist())
              for i in range(len(words))]  # fmt: skip
    assert [p.strip() for p in pieces] == words  # the tokens from one word's first token to the next's spell it
    assert len(ids) > len(words)  # "zebrafishes" is several sub-words in a 400-token vocabulary
    _, cut = align(words, encoding, 0, max_len=3)
    assert (cut >= 0).sum() < len(words) and cut[-1] == -1  # words past max_len are marked, not dropped


def test_tagged_input_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(HeadstartError, match="2 words but 1 tags"):
        read_tagged_jsonl(bad)
    train = write_ner(tmp_path / "train.jsonl", 20, 0)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"tokens": ["a"], "tags": ["B-ORG"]}) + "\n")
    names = read_tagged_jsonl(train).tag_names
    with pytest.raises(HeadstartError, match="outside the tag set"):
        read_tagged_jsonl(odd, tag_names=names)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(HeadstartError, match="no records"):
        read_tagged_jsonl(empty)


def test_ner_finetune_learns_entities(tiny_encoder, tmp_path):
    train, test = write_ner(tmp_path / "train.jsonl", 300, 0), write_ner(tmp_path / "test.jsonl", 80, 1)
    settings = [f"task.train={train}", f"task.eval={test}", f"init={tiny_encoder}", f"run.out_dir={tmp_path}",
                "budget=200", "train.steps=160", "train.eval_every=20", "train.precision=fp32", "optim.lr=3e-3",
                "task.max_len=32"]  # fmt: skip
    result = api.finetune("conll2003", settings, quiet=True)
    assert result.metric == "f1"
    assert result.metrics["f1"] > 0.8
    probe = api.finetune("conll2003", [*settings, "readout=logistic", "run.name=probe"], quiet=True)
    assert 0.0 <= probe.metrics["f1"] <= 1.0 and probe.steps == 0


def test_ner_transfer_study_runs_and_reports_f1(tiny_encoder, tmp_path):
    train, test = write_ner(tmp_path / "train.jsonl", 200, 0), write_ner(tmp_path / "test.jsonl", 40, 1)
    study = tmp_path / "study.yaml"
    study.write_text(
        f"""
finetune: conll2003
settings: [task.train={train}, task.eval={test}, task.max_len=32, train.steps=20, train.eval_every=10,
           train.precision=fp32, optim.lr=3e-3]
inits: {{pretrained: {tiny_encoder}, scratch: scratch}}
budgets: [60, 0]
seeds: 1
sweep: {{lr: []}}
run: {{out_dir: {tmp_path}, name: ner-study}}
"""
    )
    report = api.transfer(str(study))
    records = [json.loads(line) for line in (report.parent / "results.jsonl").read_text().splitlines()]
    assert [(r["init"], r["budget"]) for r in records] == [
        ("pretrained", 60),
        ("scratch", 60),
        ("pretrained", 200),
        ("scratch", 200),
    ]
    assert all(r["metric"] == "f1" and 0.0 <= r["value"] <= 1.0 for r in records)
    assert "f1" in report.read_text()
