"""Training throughput: headstart's loop against Hugging Face transformers, same run, same shapes.

For each shape, four models of identical shape (layers, heads, width, context, batch,
vocabulary) train on the same token windows: headstart's decoder (causal LM) and encoder
(masked LM) through headstart's own loop, and transformers' GPT2LMHeadModel and
BertForMaskedLM in a plain PyTorch loop (fused AdamW, clipping, the same masking). Each runs
in fp32 and under bf16 autocast; its best is compared. Blocks of steps are interleaved and
medians taken, because this machine's speed drifts over minutes. Peak memory is measured
in a fresh process per model. Both sides train on ``--device`` (the CPU unless told), with
autocast for that device. The last line printed is one JSON object with every figure.

    python benchmarks/throughput.py [--repeats 3] [--steps 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, hf_gpt2, machine, shakespeare_char, wikitext_bpe8k
from headstart.config import ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from headstart.data.shards import open_shards
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.models.transformer import Transformer
from headstart.objectives.clm import CausalLM
from headstart.objectives.mlm import MaskedLM
from headstart.train.flops import peak_flops, train_flops_per_token
from headstart.train.loop import Job, Outputs, step_generator, train_loop
from headstart.workflows.pretrain_data import TrainWindows


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    batch: int
    shards: str


IMPLS = ("headstart-clm", "hf-gpt2", "headstart-mlm", "hf-bert")


def model_config(shape: Shape, vocab: int, causal: bool) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        context=shape.seq_len,
        causal=causal,
    )


def masked_lm(shards: Path) -> MaskedLM:
    info = tokenizer_info(load_tokenizer(shards / "tokenizer.json"))
    return MaskedLM(info.vocab_size, info.mask_id, info.special_ids)


def hf_model(impl: str, shape: Shape, vocab: int) -> torch.nn.Module:
    import transformers

    if impl == "hf-gpt2":
        return hf_gpt2(vocab, shape.n_layer, shape.n_head, shape.n_embd, shape.seq_len)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=shape.n_embd,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_head,
        intermediate_size=4 * shape.n_embd,
        max_position_embeddings=shape.seq_len,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForMaskedLM._from_config(config, attn_implementation="sdpa")


def synchronized(device: torch.device) -> float:
    """The time once ``device`` has finished its queued work (a GPU runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def hf_steps(
    impl: str, shape: Shape, bf16: bool, steps: int, first_sample: int, compile: bool, device: torch.device
) -> list[float]:
    """Seconds per step of a plain PyTorch loop over a transformers model, on ``device``."""
    shards = Path(shape.shards)
    vocab = open_shards(shards).vocab_size
    torch.manual_seed(0)
    model = hf_model(impl, shape, vocab).to(device).train()
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1, fused=True)
    source = TrainWindows(open_shards(shards), shape.seq_len, seed=0)
    objective = CausalLM() if impl == "hf-gpt2" else masked_lm(shards)
    times = []
    for step in range(steps):
        start = synchronized(device)
        batch = objective.make_batch(
            source.batch(first_sample + step * shape.batch, shape.batch), step_generator(0, step, 0)
        )
        batch = {key: value.to(device) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if impl == "hf-gpt2":
                logits = forward(input_ids=batch["input"]).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten())
            else:
                labels = batch["target"].masked_fill(~batch["selected"], -100)
                loss = forward(input_ids=batch["input"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(synchronized(device) - start)
    return times


def headstart_steps(
    impl: str, shape: Shape, bf16: bool, steps: int, run: int, compile: bool, device: torch.device
) -> list[float]:
    """Seconds per step of headstart's own loop (data loading, logging and all) on ``device``, from its metrics."""
    shards = Path(shape.shards)
    vocab = open_shards(shards).vocab_size
    causal = impl == "headstart-clm"
    config = model_config(shape, vocab, causal)
    torch.manual_seed(0)
    model = Transformer(config)
    objective = CausalLM() if causal else masked_lm(shards)
    log_every = 5
    train = TrainConfig(
        steps=steps,
        batch_size=shape.batch,
        seq_len=shape.seq_len,
        precision="bf16" if bf16 else "fp32",
        eval_every=0,
        checkpoint_every=0,
        log_every=log_every,
        keep_checkpoints=1,
        compile=compile,
        device=str(device),
    )
    run_dir = CACHE / "throughput-runs" / f"{impl}-{shape.name}-{run}"
    optim, schedule = OptimConfig(lr=1e-4, beta2=0.99), ScheduleConfig(warmup_steps=10)
    settings = SimpleNamespace(train=train, optim=optim, schedule=schedule)
    source = TrainWindows(open_shards(shards), shape.seq_len, seed=0)
    flops = train_flops_per_token(config, shape.seq_len, objective.head_fraction)
    train_loop(Job(model, objective, source, settings, flops), Outputs(run_dir, {}, quiet=True))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = shape.batch * shape.seq_len
    return [tokens_per_step / r["tokens_per_s"] for r in records if "tokens_per_s" in r for _ in range(log_every)]


def measure(
    impl: str, shape: Shape, bf16: bool, steps: int, run: int, device: torch.device, compile: bool = False
) -> list[float]:
    if impl.startswith("hf-"):
        return hf_steps(impl, shape, bf16, steps, run * steps * shape.batch, compile, device)
    return headstart_steps(impl, shape, bf16, steps, run, compile, device)


def data_seconds_per_step(impl: str, shape: Shape, steps: int = 50) -> float:
    """Median time headstart's data path takes per step (memmap windows → batch, masking included)."""
    shards = Path(shape.shards)
    source = TrainWindows(open_shards(shards), shape.seq_len, seed=0)
    objective = CausalLM() if impl == "headstart-clm" else masked_lm(shards)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        objective.make_batch(source.batch(step * shape.batch, shape.batch), step_generator(0, step, 0))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not carry the parent's
    peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _memory_child(impl: str, shape: Shape, setting: tuple[bool, bool], device: str, queue: mp.Queue) -> None:
    before = _peak_rss_kib()
    measure(impl, shape, setting[0], steps=6, run=99, device=torch.device(device), compile=setting[1])
    if device.startswith("cuda"):
        queue.put(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20)
    else:
        queue.put((_peak_rss_kib() - before) / 1024)


def peak_memory_mib(impl: str, shape: Shape, setting: tuple[bool, bool], device: torch.device) -> float:
    """Growth of the peak resident set (on a GPU: the peak of allocated device memory) while
    building and training the model, in a fresh process."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_child, args=(impl, shape, setting, str(device), queue))
    process.start()
    value = queue.get()
    process.join()
    return round(value, 1)


def label(setting: tuple[bool, bool]) -> str:
    return ("bf16" if setting[0] else "fp32") + ("_compiled" if setting[1] else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved blocks per model")
    parser.add_argument("--steps", type=int, default=20, help="steps per block (the first 5 are warm-up)")
    parser.add_argument("--shapes", default="small,large")
    parser.add_argument("--compile", action="store_true", help="also time every model under torch.compile (fp32)")
    parser.add_argument("--device", default="cpu", help="where both sides train: cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = [(False, False), (True, False)] + ([(False, True)] if args.compile else [])  # (bf16, compile)
    shapes = {
        "small": Shape("small", 4, 4, 128, 64, 12, str(shakespeare_char())),
        "large": Shape("large", 6, 6, 384, 256, 8, str(wikitext_bpe8k())),
    }
    facts = {**machine(), "device": str(device)}
    print(json.dumps(facts))
    results = []
    for shape in (shapes[name] for name in args.shapes.split(",")):
        vocab = open_shards(shape.shards).vocab_size
        timings: dict[tuple[str, tuple[bool, bool]], list[float]] = {(i, s): [] for i in IMPLS for s in settings}
        for run in range(args.repeats):
            for impl, setting in timings:
                timings[(impl, setting)] += measure(impl, shape, setting[0], args.steps, run, device, setting[1])[5:]
        tokens_per_step = shape.batch * shape.seq_len
        row: dict[str, object] = {"case": shape.name, "shape": {**shape.__dict__, "vocab": vocab}}
        best = {}
        for impl in IMPLS:
            options = {s: tokens_per_step / statistics.median(timings[(impl, s)]) for s in settings}
            fastest = max(options, key=options.__getitem__)
            best[impl] = (options[fastest], fastest)
            row[impl] = {
                **{f"tokens_per_s_{label(s)}": round(v) for s, v in options.items()},
                "best": label(fastest),
                "peak_memory_mib": peak_memory_mib(impl, shape, fastest, device),
            }
        for ours, theirs in (("headstart-clm", "hf-gpt2"), ("headstart-mlm", "hf-bert")):
            tokens_per_s, (bf16, _) = best[ours]
            config = model_config(shape, vocab, ours == "headstart-clm")
            head_fraction = 1.0 if ours == "headstart-clm" else 0.15
            flops = train_flops_per_token(config, shape.seq_len, head_fraction)
            peak = peak_flops(torch.bfloat16 if bf16 else torch.float32, device)
            data_s = data_seconds_per_step(ours, shape)
            row[f"{ours}_vs_{theirs}"] = {
                "headstart_tokens_per_s": round(tokens_per_s),
                "baseline_tokens_per_s": round(best[theirs][0]),
                "ratio": round(tokens_per_s / best[theirs][0], 2),
                "data_ms_per_step": round(1000 * data_s, 3),
                "data_share_of_step": round(data_s * tokens_per_s / tokens_per_step, 4),
                "headstart_mfu": round(tokens_per_s * flops / peak, 3),
            }
        results.append(row)
        print(json.dumps(row))
    print(json.dumps({"machine": facts, "results": results}))


if __name__ == "__main__":
    main()
