"""The command line: useful help, and one clear line with a non-zero exit for bad input."""

import subprocess
import sys

import pytest

from tests.conftest import make_corpus


def headstart(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "headstart", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_every_verb():
    result = headstart("--help")
    assert result.returncode == 0
    for verb in (
        "prepare",
        "pretrain",
        "finetune",
        "transfer",
        "evaluate",
        "generate",
        "fill-mask",
        "embed",
        "mismatch",
        "plan",
        "pilot",
        "quickstart",
    ):
        assert verb in result.stdout
    pretrain_help = headstart("pretrain", "--help").stdout
    assert "gpt-tiny" in pretrain_help and "--resume" in pretrain_help


def test_user_errors_are_one_line(tmp_path):
    missing = tmp_path / "missing.txt"
    assert_one_line_error(headstart("prepare", str(missing), "--out", str(tmp_path / "o")), str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    assert_one_line_error(headstart("prepare", str(empty), "--out", str(tmp_path / "o")), "no documents")
    assert not (tmp_path / "o").exists()
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": broken\n')
    assert_one_line_error(headstart("prepare", str(bad_json), "--out", str(tmp_path / "o")), "bad.jsonl:2")
    assert_one_line_error(headstart("pretrain", "gpt-tiny", "model.n_layr=2"), "n_layer")
    # overrides after a flag are overrides too, not "unrecognized arguments"
    assert_one_line_error(headstart("pretrain", "gpt-tiny", "--quiet", "model.n_layr=2"), "n_layer")
    assert_one_line_error(headstart("pretrain", "gpt-tiny", "data.shards=" + str(tmp_path)), "meta.json")
    assert_one_line_error(headstart("evaluate", str(tmp_path / "nope")), "no such file")


def test_prepare_pretrain_evaluate_generate_end_to_end(tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", documents=200)
    shards = tmp_path / "shards"
    result = headstart("prepare", str(corpus), "--out", str(shards), "--vocab-size", "300", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert (shards / "train.bin").is_file() and (shards / "meta.json").is_file()
    result = headstart(
        "pretrain",
        "gpt-tiny",
        f"data.shards={shards}",
        f"run.out_dir={tmp_path}",
        "run.name=r",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "model.context=32",
        "train.seq_len=32",
        "train.batch_size=4",
        "train.steps=6",
        "train.eval_every=3",
        "train.eval_batches=1",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stderr and "MFLOP/token" in result.stderr
    result = headstart("evaluate", str(tmp_path / "r"))
    assert result.returncode == 0 and "val_bpb" in result.stderr
    result = headstart("generate", str(tmp_path / "r"), "--prompt", "the", "--max-new-tokens", "5")
    assert result.returncode == 0 and result.stdout.startswith("the")
    assert_one_line_error(headstart("fill-mask", str(tmp_path / "r"), "--text", "a <mask>"), "decoder")
    assert_one_line_error(
        headstart("fill-mask", str(tmp_path / "r"), "--text", "a <mask>", "--top-k", "0"), "at least 1"
    )
    refused = headstart("generate", str(tmp_path / "r"), "--max-new-tokens", "-3", "--top-p", "0")
    assert_one_line_error(refused, "--max-new-tokens -3: expected at least 1; --top-p 0.0: expected 0 < p ≤ 1")
    assert_one_line_error(headstart("evaluate", str(tmp_path / "r"), "--seq-len", "64"), "context of 32")


@pytest.mark.slow
def test_quickstart_runs_offline(tmp_path):
    result = headstart("quickstart", "--out", str(tmp_path / "qs"), "--minutes", "0.3", "--seeds", "2", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "qs" / "report.md").read_text()
    assert "perplexity" in report and "bits per byte" in report
    assert (tmp_path / "qs" / "loss_curve.png").stat().st_size > 10_000
    assert "which standard-library package" in report and "| pretrained |" in report and "| scratch |" in report
    assert "With 40 labels the pretrained model reads" in report and "scratch needs" in report
    cells = (tmp_path / "qs" / "transfer" / "results.jsonl").read_text().splitlines()
    assert len(cells) == 3 * 3 * 2  # inits × budgets × seeds
    assert (tmp_path / "qs" / "transfer" / "metric_vs_labels.png").stat().st_size > 10_000
