"""Mamba's selective scan, sequential against chunked, and training throughput against context
length for mamba-tiny and gpt-tiny (the same parameter count within 3%).

1. The scan alone at batch 8, length 1,024, 256 inner channels, state 16: seconds for forward
   + backward and for forward only (no graph), the sequential reference against the chunked
   scan at each chunk length given, compiled (the default; its one-time compilation happens in
   the warm-up round) and op by op (``compiled=False``).
2. Training tokens/s (forward, backward, AdamW step) of the two recipes' models at context
   256 → 4,096, the same tokens per step at every length (the recipes' 4,096 by default), on
   random token ids of an 8,192-token vocabulary. mamba-tiny's scan keeps one state per chunk
   for the backward pass, not one per step.

Repeats interleave the variants and medians are taken, because this machine's speed drifts
over minutes. The last line printed is one JSON object with every figure.

    python benchmarks/mamba_scan.py [--repeats 5] [--chunks 32,64,128] [--precision bf16]
    python benchmarks/mamba_scan.py --smoke   # tiny sizes, seconds: does it run
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine
from headstart.config import ModelConfig, PretrainConfig, load_config
from headstart.models import build_backbone
from headstart.models.mamba import selective_scan_chunked, selective_scan_reference
from headstart.objectives.clm import CausalLM

VOCAB = 8192


def scan_inputs(batch: int, length: int, inner: int, state: int) -> list[torch.Tensor]:
    """Inputs at the model's scales: Δ near its initial range, A = −exp(A_log) near S4D-real's."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, length, inner, generator=g)
    delta = F.softplus(torch.randn(batch, length, inner, generator=g) - 3)
    A = -torch.exp(torch.rand(inner, state, generator=g) * 3)
    B, C = (torch.randn(batch, length, state, generator=g) for _ in range(2))
    return [t.requires_grad_() for t in (u, delta, A, B, C, torch.ones(inner))]


def scan_benchmark(shape: tuple[int, int, int, int], chunks: list[int], repeats: int) -> dict[str, object]:
    inputs = scan_inputs(*shape)
    scans: dict[str, Callable[..., torch.Tensor]] = {"reference": selective_scan_reference}
    for chunk in chunks:
        for compiled in (True, False):
            name = f"{'compiled' if compiled else 'eager'}-{chunk}"
            scans[name] = lambda *a, chunk=chunk, compiled=compiled: selective_scan_chunked(*a, chunk, compiled)

    def train(scan: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for t in inputs:
                t.grad = None
            scan(*inputs).sum().backward()

        return run

    def infer(scan: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                scan(*inputs)

        return run

    result: dict[str, object] = {
        "shape": dict(zip(("batch", "length", "inner", "state"), shape, strict=True)),
        "threads": torch.get_num_threads(),
    }
    for mode, wrap in (("forward_backward", train), ("forward", infer)):
        seconds = interleaved({name: wrap(scan) for name, scan in scans.items()}, repeats)
        speedups = {name: seconds["reference"] / s for name, s in seconds.items() if name != "reference"}
        result[mode] = {"seconds": seconds, "speedup_over_reference": speedups}
        print(f"scan {mode}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()), flush=True)
    return result


def train_step(model: torch.nn.Module, tokens: torch.Tensor, bf16: bool) -> Callable[[], None]:
    objective, optimizer = CausalLM(), torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = objective.make_batch(tokens, torch.Generator())

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = objective.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def throughput_benchmark(
    recipes: dict[str, ModelConfig], lengths: list[int], tokens_per_step: int, repeats: int, bf16: bool
) -> dict[str, object]:
    rows = []
    for length in lengths:
        batch = max(1, tokens_per_step // length)
        tokens = torch.randint(0, VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(length))
        steps = {}
        for name, config in recipes.items():
            torch.manual_seed(0)
            steps[name] = train_step(build_backbone(replace(config, context=length)).train(), tokens, bf16)
        seconds = interleaved(steps, repeats)
        speeds = {f"{name}_tokens_per_s": batch * length / s for name, s in seconds.items()}
        rows.append({"context": length, "batch": batch} | speeds)
        print(f"context {length}: " + ", ".join(f"{n} {batch * length / s:,.0f} tok/s" for n, s in seconds.items()))
    return {"tokens_per_step": tokens_per_step, "precision": "bf16" if bf16 else "fp32", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", default="16", help="chunk lengths of the chunked scan, comma-separated")
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--tokens-per-step", type=int, default=4096, help="the recipes' 16 × 256")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    recipes = {
        name: replace(load_config(PretrainConfig, name).model, vocab_size=VOCAB) for name in ("gpt-tiny", "mamba-tiny")
    }
    shape, tokens_per_step, repeats = (8, 1024, 256, 16), args.tokens_per_step, args.repeats
    if args.smoke:
        shape, chunks, lengths, tokens_per_step, repeats = (2, 64, 16, 4), [16], [32, 64], 128, 1
        recipes = {name: replace(c, n_layer=2, n_embd=32, n_head=2) for name, c in recipes.items()}
    params = {name: build_backbone(config).num_params() for name, config in recipes.items()}
    print(f"parameters: {params}", flush=True)
    results = {
        "machine": {} if args.smoke else machine(),
        "parameters": params,
        "scan": scan_benchmark(shape, chunks, repeats),
        "throughput": throughput_benchmark(recipes, lengths, tokens_per_step, repeats, args.precision == "bf16"),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
