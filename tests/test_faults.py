"""Faults a user's machine meets: a diverging run, a full or read-only disk, damaged checkpoints,
two runs in one directory, and processes killed at random (the slow sweep)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from headstart import api, cli
from headstart.errors import HeadstartError
from headstart.train import checkpoint as ckpt
from headstart.train.run_dir import RunLock

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.context=16", "train.seq_len=16",
        "train.batch_size=4", "train.precision=fp32", "train.eval_batches=1", "train.log_every=1",
        "embeddings.init=random", "schedule.warmup_steps=1"]  # fmt: skip
TIMING = {"tokens_per_s", "mfu", "elapsed_s", "eta_s", "peak_memory_bytes"}  # measured per process: never equal


def overrides(shards, out, name, *extra):
    return [*TINY, f"data.shards={shards}", f"run.out_dir={out}", f"run.name={name}", *extra]


def pretrain(shards, out, name, *extra, resume=False):
    return api.pretrain("gpt-tiny", overrides(shards, out, name, *extra), resume=resume, quiet=True)


def run_cli(argv, capsys):
    """The CLI in this process: its exit code and its stderr lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return exit_.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def rewrite_manifest(folder: Path) -> None:
    """Re-sign a checkpoint after editing it by hand, as if it had been written so."""
    files = {p.name: ckpt._sha256(p) for p in folder.iterdir() if p.is_file() and p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps({"sha256": files, "self": ckpt.manifest_digest(files)}))


def test_a_diverging_run_is_stopped_and_never_writes_non_finite_weights(tiny_shards, tmp_path):
    with pytest.raises(HeadstartError, match=r"training diverged at step \d+: 8 steps in a row.*optim.lr \(now 1000\)"):
        pretrain(tiny_shards, tmp_path, "diverge", "optim.lr=1e3", "train.steps=200", "train.checkpoint_every=4")
    written = ckpt.list_checkpoints(tmp_path / "diverge" / "checkpoints")
    for folder in written:  # whatever was written before it stopped is finite and loads
        assert all(torch.isfinite(t).all() for t in load_file(str(folder / "model.safetensors")).values())
    records = [json.loads(x) for x in (tmp_path / "diverge" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped_steps", 0) > 0 for r in records)


def test_a_non_finite_checkpoint_is_refused_by_every_reader(tiny_shards, tmp_path, capsys):
    good = pretrain(tiny_shards, tmp_path, "good", "train.steps=2").checkpoint
    weights = load_file(str(good / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(good / "model.safetensors"))
    rewrite_manifest(good)
    code, lines = run_cli(["evaluate", str(good)], capsys)
    assert code != 0 and len(lines) == 1 and "NaN or inf" in lines[0] and name in lines[0]
    code, lines = run_cli(["export", str(good), "--to", "hf", "--out", str(tmp_path / "hf")], capsys)
    assert code != 0 and len(lines) == 1 and "NaN or inf" in lines[0] and not (tmp_path / "hf").exists()
    with pytest.raises(HeadstartError, match="NaN or inf"):
        api.finetune("sst2", [f"init={good}", "task.train=x.jsonl"], quiet=True)
    with pytest.raises(HeadstartError, match="NaN or inf"):
        pretrain(tiny_shards, tmp_path, "good", "train.steps=2", resume=True)


def test_a_flipped_manifest_byte_is_named_as_the_manifest(tiny_shards, tmp_path):
    folder = pretrain(tiny_shards, tmp_path, "run", "train.steps=2").checkpoint
    text = (folder / "manifest.json").read_text()
    at = text.index('"metrics.jsonl": "') + len('"metrics.jsonl": "')
    flipped = "0" if text[at] != "0" else "1"
    (folder / "manifest.json").write_text(text[:at] + flipped + text[at + 1 :])
    with pytest.raises(HeadstartError, match=r"manifest.json: damaged"):
        ckpt.verify(folder)


def test_a_flipped_byte_in_any_checkpoint_file_is_named_on_load(tiny_shards, tmp_path):
    folder = pretrain(tiny_shards, tmp_path, "run", "train.steps=2").checkpoint
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        copy = tmp_path / f"copy-{file.name}"
        shutil.copytree(folder, copy)
        data = bytearray((copy / file.name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / file.name).write_bytes(bytes(data))
        with pytest.raises(HeadstartError, match=rf"{copy}/{file.name}\b"):
            ckpt.open_checkpoint(copy)


def test_a_truncated_shard_is_named(tiny_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    (shards / "train.bin").write_bytes((shards / "train.bin").read_bytes()[:-2])
    with pytest.raises(HeadstartError, match=r"train.bin: expected [\d,]+ bytes .* truncated"):
        pretrain(shards, tmp_path, "run", "train.steps=2")


def test_resume_falls_back_past_a_damaged_newest_checkpoint(tiny_shards, tmp_path, capsys):
    settings = ["train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    straight = pretrain(tiny_shards, tmp_path, "straight", *settings)
    pretrain(tiny_shards, tmp_path, "damaged", *settings[:1], "train.checkpoint_every=2", "train.max_minutes=1e-9")
    pretrain(tiny_shards, tmp_path, "damaged", *settings[:1], "train.checkpoint_every=2", resume=True)
    folders = ckpt.list_checkpoints(tmp_path / "damaged" / "checkpoints")
    newest = folders[-1]
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    resumed = pretrain(tiny_shards, tmp_path, "damaged", *settings[:1], "train.checkpoint_every=2",
                       "train.steps=8", resume=True)  # fmt: skip
    err = capsys.readouterr().err
    assert f"skipping {newest.name}" in err and f"from {folders[-2].name}" in err
    assert (newest / "model.safetensors").exists()  # the damaged one is named, never deleted by the resume
    assert resumed.step == 8
    a, b = (
        load_file(str(straight.checkpoint / "model.safetensors")),
        load_file(str(resumed.checkpoint / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_run_in_the_same_directory_is_refused_and_a_stale_lock_taken_over(tiny_shards, tmp_path):
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    with RunLock(run_dir), pytest.raises(HeadstartError, match=f"is in use by process {os.getpid()}"):
        pretrain(tiny_shards, tmp_path, "locked", "train.steps=2")
    assert not (run_dir / "run.lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    (run_dir / "checkpoints" / ".tmp_step_00000004_99999").mkdir(parents=True)  # a killed writer's leftovers
    assert pretrain(tiny_shards, tmp_path, "locked", "train.steps=2").step == 2
    assert not list((run_dir / "checkpoints").glob(".tmp_*")) and not (run_dir / "run.lock").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 512 kB tmpfs where this process may mount one (root on Linux); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_last_checkpoint(tiny_shards, small_disk, capsys):
    argv = ["pretrain", "gpt-tiny", *overrides(tiny_shards, small_disk, "full", "train.steps=400",
            "train.checkpoint_every=2", "train.keep_checkpoints=0")]  # fmt: skip
    code, lines = run_cli([*argv, "--quiet"], capsys)
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and not any("Traceback" in line for line in lines)
    assert "no space left on the device" in errors[0] and str(small_disk / "full") in errors[0]
    folders = ckpt.list_checkpoints(small_disk / "full" / "checkpoints")
    assert folders and not list((small_disk / "full" / "checkpoints").glob(".tmp_*"))
    ckpt.verify(folders[-1])  # the newest whole checkpoint is intact


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder nobody may write in: a read-only mount for root, a mode for anyone else."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("a read-only folder for root needs a read-only mount")
    else:
        folder.chmod(0o555)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_a_read_only_checkpoint_folder_fails_before_the_first_step(tiny_shards, read_only_dir, capsys):
    checkpoints = read_only_dir.parent / "ro" / "checkpoints"
    checkpoints.parent.mkdir()
    checkpoints.symlink_to(read_only_dir)
    argv = ["pretrain", "gpt-tiny", *overrides(tiny_shards, read_only_dir.parent, "ro", "train.steps=5"), "--quiet"]
    code, lines = run_cli(argv, capsys)
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and str(checkpoints) in errors[0]
    assert "read-only" in errors[0] or "permission denied" in errors[0]
    assert not (checkpoints.parent / "metrics.jsonl").exists()  # not one step was trained


@pytest.mark.parametrize("verb", ["prepare", "embed", "mismatch", "export", "import-hf", "plan"])
def test_every_writing_verb_says_a_read_only_output_in_one_line(verb, tiny_decoder, read_only_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran far away\n" * 30)
    out = read_only_dir / "out"
    argv = {
        "prepare": ["prepare", str(corpus), "--out", str(out), "--vocab-size", "300", "--workers", "1"],
        "embed": ["embed", str(tiny_decoder), str(corpus), "--out", str(out / "e.npy")],
        "mismatch": ["mismatch", str(corpus), str(corpus), "--out", str(out / "m.md")],
        "export": ["export", str(tiny_decoder), "--to", "hf", "--out", str(out)],
        "import-hf": ["import-hf", str(tmp_path / "hf"), "--out", str(out)],
        "plan": ["plan", "--params", "1M", "--calibration-steps", "2", "--out", str(out / "plan.md")],
    }[verb]
    if verb == "import-hf":
        assert run_cli(["export", str(tiny_decoder), "--to", "hf", "--out", str(tmp_path / "hf")], capsys)[0] == 0
    code, lines = run_cli(argv, capsys)
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    assert str(read_only_dir) in errors[0] and ("read-only" in errors[0] or "permission denied" in errors[0])


def newest_step(checkpoints: Path) -> int:
    found = ckpt.list_checkpoints(checkpoints)
    return int(found[-1].name.removeprefix("step_")) if found else 0


@pytest.mark.slow
def test_kill_9_at_random_points_resumes_to_the_same_weights_and_log(tiny_shards, tmp_path):
    """Kill -9 a run ≥ 10 times, each after it has checkpointed a random number of steps further,
    half of them the moment its next checkpoint write begins, and resume it each time: the final
    weights are bitwise those of an uninterrupted run, its log equals that run's record for record
    (wall-clock fields aside), and no half-written checkpoint or lock is left."""
    settings = ["train.steps=90", "train.checkpoint_every=3", "train.eval_every=7", "model.dropout=0.1"]
    straight = pretrain(tiny_shards, tmp_path, "straight", *settings)
    command = [sys.executable, "-m", "headstart", "pretrain", "gpt-tiny",
               *overrides(tiny_shards, tmp_path, "killed", *settings), "--quiet"]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng, kills, inside_writes = random.Random(0), 0, 0
    checkpoints = tmp_path / "killed" / "checkpoints"
    while True:
        process = subprocess.Popen([*command, "--resume"], env=environment, stderr=subprocess.DEVNULL)
        goal, in_write = newest_step(checkpoints) + 3 * rng.randint(1, 3), kills % 2 == 1
        while process.poll() is None and newest_step(checkpoints) < goal:
            time.sleep(0.001)
        while in_write and process.poll() is None and not list(checkpoints.glob(".tmp_step_*")):
            time.sleep(0.0002)
        if not in_write:
            time.sleep(rng.uniform(0.0, 0.05))
        if process.poll() is not None:
            assert process.returncode == 0
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        inside_writes += bool(list(checkpoints.glob(".tmp_step_*")))
    print(f"kill -9 sweep: {kills} kills, {inside_writes} inside a checkpoint write")  # shown with pytest -s
    assert kills >= 10 and inside_writes >= 3, (kills, inside_writes)
    final = ckpt.list_checkpoints(checkpoints)[-1]
    assert (final / "model.safetensors").read_bytes() == (straight.checkpoint / "model.safetensors").read_bytes()
    assert without_timing(tmp_path / "killed" / "metrics.jsonl") == without_timing(
        tmp_path / "straight" / "metrics.jsonl"
    )
    assert not list(checkpoints.glob(".tmp_*")) and not (tmp_path / "killed" / "run.lock").exists()


def test_resuming_a_finished_run_changes_nothing(tiny_shards, tmp_path):
    """A run killed after its final checkpoint is resumed as finished: no second evaluation in the
    log, no checkpoint rewritten, and its last evaluation returned as it was logged."""
    done = pretrain(tiny_shards, tmp_path, "done", "train.steps=4", "train.eval_every=2")
    log = (tmp_path / "done" / "metrics.jsonl").read_text()
    written = (done.checkpoint / "manifest.json").stat().st_mtime_ns
    again = pretrain(tiny_shards, tmp_path, "done", "train.steps=4", "train.eval_every=2", resume=True)
    assert (tmp_path / "done" / "metrics.jsonl").read_text() == log
    assert (done.checkpoint / "manifest.json").stat().st_mtime_ns == written
    assert again.step == 4 and again.checkpoint == done.checkpoint and again.last_eval == pytest.approx(done.last_eval)
