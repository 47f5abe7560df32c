"""Shared by the benchmark scripts: where the data is, cached shards, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from headstart.config import PrepareConfig, TokenizerConfig
from headstart.data.prepare import prepare
from headstart.data.shards import open_shards
from headstart.train.flops import peak_flops

ROOT = Path(__file__).resolve().parent
DATA = Path(os.environ.get("HEADSTART_DATA", ROOT.parents[1] / "shared" / "data"))
CACHE = Path(os.environ.get("HEADSTART_BENCH_CACHE", ROOT.parent / "runs" / "bench"))


def shakespeare_char() -> Path:
    """Tiny Shakespeare, char-level, first 90% train / last 10% val (nanoGPT's split)."""
    out = CACHE / "shards-shakespeare-char"
    if not (out / "meta.json").is_file():
        prepare(
            PrepareConfig(
                inputs=[str(DATA / "text" / "tinyshakespeare" / "input.txt")],
                out=str(out),
                text_mode="file",
                val_mode="tail",
                val_fraction=0.1,
                tokenizer=TokenizerConfig(kind="char"),
            )
        )
    open_shards(out)
    return out


def wikitext_bpe8k() -> Path:
    """WikiText-2 (train / valid files as the splits), byte-level BPE with 8,192 tokens."""
    out = CACHE / "shards-wikitext2-bpe8k"
    if not (out / "meta.json").is_file():
        folder = DATA / "text" / "wikitext2"
        prepare(
            PrepareConfig(
                inputs=[str(folder / "train.txt")],
                val_inputs=[str(folder / "valid.txt")],
                out=str(out),
                text_mode="line",
                tokenizer=TokenizerConfig(kind="bpe", vocab_size=8192),
            )
        )
    open_shards(out)
    return out


def machine() -> dict[str, object]:
    cpu = torch.device("cpu")
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_fp32_gflops": round(peak_flops(torch.float32, cpu) / 1e9),
        "peak_bf16_gflops": round(peak_flops(torch.bfloat16, cpu) / 1e9),
    }


def hf_gpt2(vocab: int, n_layer: int, n_head: int, n_embd: int, context: int) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel of a given shape, no dropout, SDPA attention: the baseline."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each variant over ``repeats`` rounds after ``warmup`` unmeasured ones,
    the variants taking turns in every round so that the machine's drift hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
