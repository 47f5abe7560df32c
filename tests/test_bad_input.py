"""Bad input, verb by verb: every case exits non-zero with one stderr line that names the input,
no traceback, and leaves no temporary file behind."""

import json
import shutil
from pathlib import Path

import pytest

from headstart import cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_decoder, tiny_encoder, tiny_shards):
    """Files each case points at: good ones (checkpoints, a task, a corpus) and broken ones."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty.txt").write_text("\n\n   \n")
    (root / "corpus.txt").write_text("the cat sat on the mat\nthe dog ran far away\n" * 20)
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 5)
    (root / "task.jsonl").write_text(
        "".join(json.dumps({"text": f"a b c {i}", "label": i % 2}) + "\n" for i in range(40))
    )
    (root / "one-class.jsonl").write_text("".join(json.dumps({"text": f"a {i}", "label": 0}) + "\n" for i in range(40)))
    (root / "no-label.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    (root / "study.yaml").write_text(f"finetune: sst2\ninits: {{pretrained: {tiny_decoder}}}\nbudgets: [-1]\n")
    (root / "study-typo.yaml").write_text(f"finetune: sst2\ninitz: {{pretrained: {tiny_decoder}}}\n")
    (root / "not-a-mapping.yaml").write_text("- just\n- a list\n")
    damaged = root / "damaged"
    shutil.copytree(tiny_decoder, damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(data))
    truncated = root / "truncated"
    shutil.copytree(tiny_decoder, truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:100])
    no_manifest = root / "no-manifest"
    shutil.copytree(tiny_decoder, no_manifest)
    (no_manifest / "manifest.json").unlink()
    return {"root": root, "decoder": tiny_decoder, "encoder": tiny_encoder, "shards": tiny_shards}


def task(files, name="task.jsonl"):
    """A fine-tune's task settings: ``name`` for training, and the two-class task for evaluation
    (the training file's own labels when it has one class)."""
    scored = name if name == "one-class.jsonl" else "task.jsonl"
    return [f"task.train={files['root'] / name}", f"task.eval={files['root'] / scored}", "task.max_len=16"]


# (case id, argv built from the inputs, a fragment the one line must contain)
CASES = [
    ("prepare-missing", lambda f: ["prepare", str(f["root"] / "nope.txt"), "--out", str(f["out"])], "nope.txt"),
    ("prepare-empty", lambda f: ["prepare", str(f["root"] / "empty.txt"), "--out", str(f["out"])], "no documents"),
    ("prepare-bad-jsonl", lambda f: ["prepare", str(f["root"] / "bad.jsonl"), "--out", str(f["out"])], "bad.jsonl:2"),
    ("prepare-not-utf8", lambda f: ["prepare", str(f["root"] / "latin1.txt"), "--out", str(f["out"])], "latin1.txt"),
    (
        "prepare-val-missing",
        lambda f: ["prepare", str(f["root"] / "corpus.txt"), "--val", str(f["root"] / "v.txt"), "--out", str(f["out"])],
        "v.txt",
    ),
    (
        "prepare-vocab-zero",
        lambda f: ["prepare", str(f["root"] / "corpus.txt"), "--vocab-size", "0", "--out", str(f["out"])],
        "vocab",
    ),
    ("pretrain-unknown-recipe", lambda f: ["pretrain", "gpt-tinny"], "gpt-tiny"),
    ("pretrain-recipe-file-missing", lambda f: ["pretrain", str(f["root"] / "r.yaml")], "r.yaml"),
    ("pretrain-recipe-not-mapping", lambda f: ["pretrain", str(f["root"] / "not-a-mapping.yaml")], "mapping"),
    ("pretrain-unknown-key", lambda f: ["pretrain", "gpt-tiny", "model.n_layr=2"], "n_layer"),
    ("pretrain-wrong-type", lambda f: ["pretrain", "gpt-tiny", "model.n_layer=abc"], "model.n_layer"),
    ("pretrain-no-shards", lambda f: ["pretrain", "gpt-tiny", f"data.shards={f['root'] / 'none'}"], "none"),
    ("pretrain-zero-steps", lambda f: ["pretrain", "gpt-tiny", "train.steps=0"], "train.steps"),
    ("pretrain-negative-lr", lambda f: ["pretrain", "gpt-tiny", "optim.lr=-1"], "optim.lr"),
    ("pretrain-negative-spike", lambda f: ["pretrain", "gpt-tiny", "train.spike_factor=-1"], "spike_factor"),
    (
        "pretrain-bad-init",
        lambda f: ["pretrain", "gpt-tiny", f"data.shards={f['shards']}", f"init={f['root'] / 'gone'}"],
        "gone",
    ),
    ("pretrain-not-an-override", lambda f: ["pretrain", "gpt-tiny", "model.n_layer"], "section.field=value"),
    ("evaluate-missing", lambda f: ["evaluate", str(f["root"] / "gone")], "no such file"),
    ("evaluate-damaged", lambda f: ["evaluate", str(f["root"] / "damaged")], "model.safetensors"),
    ("evaluate-truncated", lambda f: ["evaluate", str(f["root"] / "truncated")], "model.safetensors"),
    ("evaluate-no-manifest", lambda f: ["evaluate", str(f["root"] / "no-manifest")], "no-manifest"),
    ("evaluate-too-long", lambda f: ["evaluate", str(f["decoder"]), "--seq-len", "4096"], "context"),
    (
        "generate-negative-tokens",
        lambda f: ["generate", str(f["decoder"]), "--max-new-tokens", "-3"],
        "--max-new-tokens",
    ),
    ("generate-top-k", lambda f: ["generate", str(f["decoder"]), "--top-k", "-1"], "--top-k"),
    ("generate-temperature", lambda f: ["generate", str(f["decoder"]), "--temperature", "-1"], "--temperature"),
    ("generate-encoder", lambda f: ["generate", str(f["encoder"]), "--prompt", "the"], "encoder"),
    ("fill-mask-decoder", lambda f: ["fill-mask", str(f["decoder"]), "--text", "a <mask>"], "decoder"),
    ("fill-mask-no-mask", lambda f: ["fill-mask", str(f["encoder"]), "--text", "no mask here"], "<mask>"),
    ("fill-mask-top-k", lambda f: ["fill-mask", str(f["encoder"]), "--text", "a <mask>", "--top-k", "0"], "top-k"),
    (
        "finetune-unknown-readout",
        lambda f: ["finetune", "sst2", f"init={f['decoder']}", "readout=probee", *task(f)],
        "readout=probee",
    ),
    ("finetune-negative-budget", lambda f: ["finetune", "sst2", "budget=-5", *task(f)], "budget"),
    ("finetune-val-fraction", lambda f: ["finetune", "sst2", "val_fraction=1.5", *task(f)], "val_fraction"),
    (
        "finetune-task-missing",
        lambda f: ["finetune", "sst2", f"init={f['decoder']}", "task.train=/no/task.jsonl", "task.eval=/no/task.jsonl"],
        "task.jsonl",
    ),
    ("finetune-init-missing", lambda f: ["finetune", "sst2", f"init={f['root'] / 'gone'}", *task(f)], "gone"),
    (
        "finetune-pattern",
        lambda f: ["finetune", "sst2", "readout=prompt", "prompt_pattern=It was", *task(f)],
        "prompt_pattern",
    ),
    (
        "finetune-label-words",
        lambda f: [
            "finetune",
            "sst2",
            f"init={f['decoder']}",
            "readout=prompt",
            "label_words=[the]",
            "budget=20",
            *task(f),
        ],
        "label_words",
    ),
    (
        "finetune-no-label",
        lambda f: ["finetune", "sst2", f"init={f['decoder']}", *task(f, "no-label.jsonl")],
        "no-label.jsonl",
    ),
    (
        "finetune-setfit-one-class",
        lambda f: [
            "finetune",
            "sst2",
            f"init={f['decoder']}",
            "readout=setfit",
            "budget=20",
            *task(f, "one-class.jsonl"),
        ],
        "one class",
    ),
    ("finetune-image-readout", lambda f: ["finetune", "fmnist", "readout=prompt"], "readout=prompt"),
    ("transfer-missing", lambda f: ["transfer", str(f["root"] / "s.yaml")], "s.yaml"),
    ("transfer-negative-budget", lambda f: ["transfer", str(f["root"] / "study.yaml")], "budgets"),
    ("transfer-typo", lambda f: ["transfer", str(f["root"] / "study-typo.yaml")], "initz"),
    (
        "pilot-no-time",
        lambda f: ["pilot", str(f["root"] / "study.yaml"), "--minutes", "0", "budgets=[100]"],
        "--minutes 0",
    ),
    (
        "pilot-forecast-at-zero",
        lambda f: ["pilot", str(f["root"] / "study.yaml"), "--minutes", "5", "--forecast-at", "0", "budgets=[100]"],
        "--forecast-at 0",
    ),
    (
        "embed-missing-checkpoint",
        lambda f: ["embed", str(f["root"] / "gone"), str(f["root"] / "corpus.txt"), "--out", str(f["out"] / "e.npy")],
        "gone",
    ),
    (
        "embed-missing-text",
        lambda f: ["embed", str(f["decoder"]), str(f["root"] / "nope.txt"), "--out", str(f["out"] / "e.npy")],
        "nope.txt",
    ),
    (
        "embed-empty-text",
        lambda f: ["embed", str(f["decoder"]), str(f["root"] / "empty.txt"), "--out", str(f["out"] / "e.npy")],
        "empty.txt",
    ),
    (
        "mismatch-missing",
        lambda f: ["mismatch", str(f["root"] / "nope.txt"), str(f["root"] / "corpus.txt")],
        "nope.txt",
    ),
    ("export-missing", lambda f: ["export", str(f["root"] / "gone"), "--to", "hf", "--out", str(f["out"])], "gone"),
    (
        "export-damaged",
        lambda f: ["export", str(f["root"] / "damaged"), "--to", "hf", "--out", str(f["out"])],
        "model.safetensors",
    ),
    ("import-hf-missing", lambda f: ["import-hf", str(f["root"] / "gone"), "--out", str(f["out"])], "gone"),
    ("plan-bad-size", lambda f: ["plan", "--params", "10Q"], "10Q"),
]


@pytest.mark.parametrize("build,fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_leaves_nothing_behind(build, fragment, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a verb writes by default lands here
    out = tmp_path / "out"
    argv = build({**inputs, "out": out})
    before = set(Path(inputs["root"]).rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code != 0
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in lines[0], lines[0]
    left = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert not left and set(Path(inputs["root"]).rglob("*")) == before
    assert not out.exists() or not any(out.iterdir())
