"""Does `headstart plan --devices` predict the memory each device holds? For three transformer
shapes on WikiText-2, run a few steps under one process, DDP, FSDP2 and TP over 2 CPU processes
(gloo), read the peak resident set rank 0 logged at its last training step, subtract the same
layout's peak for a one-layer 64-wide model on two 16-token windows (the interpreter, torch, gloo
and the data), and set the rest against the plan's memory per device for that layout, less the
plan's for that small run (goal: within 20%).

    python benchmarks/plan_memory.py [--shards DIR] [--smoke]

fp32 and AdamW, so what is counted is the plan's model and not autocast's caching. The runs set
glibc's mmap threshold to 64 KiB (MALLOC_MMAP_THRESHOLD_): by default glibc raises it after each
large free and serves later large blocks from its heap, which keeps freed memory resident, so
the peak resident set would count memory the run had already let go. The last line printed is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine, wikitext_bpe8k
from headstart.config import PretrainConfig, load_config
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.layouts import Layout, plan_layout
from headstart.plan import count_params, optimizer_bytes, token_activation_bytes
from headstart.workflows.pretrain_data import resolve_config

COMMON = ["train.steps=3", "train.eval_every=0", "train.eval_batches=1", "train.log_every=1",
          "train.precision=fp32", "optim.name=adamw", "embeddings.init=random", "train.batch_size=8",
          "train.seq_len=256", "train.compile=false"]  # fmt: skip
SHAPES = {
    "4 × 256": ["model.n_layer=4", "model.n_head=4", "model.n_embd=256"],
    "6 × 512": ["model.n_layer=6", "model.n_head=8", "model.n_embd=512"],
    "8 × 768": ["model.n_layer=8", "model.n_head=12", "model.n_embd=768"],
}
SMOKE_SHAPES = {"2 × 64": ["model.n_layer=2", "model.n_head=2", "model.n_embd=64"]}
# what every run holds besides the model and its batch
FLOOR = ["model.n_layer=1", "model.n_head=2", "model.n_embd=64", "train.batch_size=2", "train.seq_len=16"]
LAYOUTS = {"one process": Layout(1, 1, False), "DDP × 2": Layout(1, 2, False), "FSDP2 × 2": Layout(1, 2, True),
           "TP 2": Layout(2, 1, False)}  # fmt: skip


def peak(out: Path, name: str, layout: Layout, shards: Path, shape: list[str]) -> float:
    """Rank 0's peak resident set at the run's last training step, in bytes."""
    args = [*COMMON, *shape, *layout.overrides, f"data.shards={shards}", f"run.out_dir={out}", f"run.name={name}"]
    launch = ["-m", "torch.distributed.run", f"--nproc_per_node={layout.devices}", "--standalone"]
    command = [sys.executable, *(launch if layout.devices > 1 else []), "-m", "headstart", "pretrain", "gpt-tiny",
               *args, "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}  # see the docstring
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name}: {done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return float([r for r in records if "peak_memory_bytes" in r][-1]["peak_memory_bytes"])


def planned(config: PretrainConfig, layout: Layout) -> float:
    params = count_params(config)[0]
    per_token = token_activation_bytes(config, torch.float32, torch.device("cpu"))
    return plan_layout(config, layout, per_token, optimizer_bytes(config, params), torch.float32, 1e15).memory["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="prepared WikiText-2 shards (default: prepared into the cache)")
    parser.add_argument("--smoke", action="store_true", help="one toy shape, for a check of the path")
    args = parser.parse_args()
    shards = args.shards or wikitext_bpe8k()
    info = tokenizer_info(load_tokenizer(shards / "tokenizer.json"))
    floor_config = resolve_config(load_config(PretrainConfig, "gpt-tiny", [*COMMON, *FLOOR]), info)
    out = CACHE / "plan_memory"
    shutil.rmtree(out, ignore_errors=True)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    rows = []
    for layout_name, layout in LAYOUTS.items():
        floor = peak(out, f"floor-{layout.devices}-{layout.tp}-{layout.sharded}", layout, shards, FLOOR)
        for shape_name, shape in shapes.items():
            run = peak(out, f"{shape_name.replace(' × ', 'x')}-{layout.devices}-{layout.tp}-{layout.sharded}",
                       layout, shards, shape)  # fmt: skip
            config = resolve_config(load_config(PretrainConfig, "gpt-tiny", [*COMMON, *shape]), info)
            predicted = planned(config, layout) - planned(floor_config, layout)
            measured = run - floor
            rows.append({"shape": shape_name, "layout": layout_name, "params": count_params(config)[0],
                         "planned": predicted, "measured": measured, "ratio": predicted / measured})  # fmt: skip
    table = Table(title="memory per device: plan against rank 0's peak resident set, less a one-layer run's")
    for column in ("shape", "layout", "parameters", "planned", "measured", "plan ÷ measured"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["shape"], row["layout"], f"{row['params'] / 1e6:.1f}M", f"{row['planned'] / 2**20:.0f} MiB",
                      f"{row['measured'] / 2**20:.0f} MiB", f"{row['ratio']:.2f}")  # fmt: skip
    Console().print(table)
    print(json.dumps({"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
