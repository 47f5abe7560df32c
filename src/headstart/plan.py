"""Plan a pretraining run before spending it: how many tokens a model should see, or which model
a budget should buy, and what that costs here in FLOPs, wall time and memory.

Token counts follow Chinchilla (Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models"): about 20 training tokens per parameter, so a compute budget C ≈ 6·N·D with D = 20·N is
best spent on N ≈ sqrt(C / (6·20)) parameters. N is the non-embedding parameter count, Kaplan et
al. (2020)'s convention: Hoffmann et al. counted every parameter, which differs little at their
scale, but in a small model with a large vocabulary the embedding table (a lookup, not a matmul)
would set the token count. The FLOPs themselves are headstart's own count per token, attention
and the vocabulary head included (:mod:`headstart.train.flops`): the number every run records in
its compute.json.

The wall time is measured, not assumed: a few steps of the planned model through the real loop
here, or, for a model too large to time quickly, the FLOP/s a smaller model of the same family
reaches (its MFU against the machine's measured peak) applied to the planned model's FLOPs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer, models

from headstart.config import ModelConfig, PretrainConfig, TokenizerConfig, load_config
from headstart.data.shards import ShardWriter
from headstart.data.tokenizers import SPECIAL_TOKENS, UNK, load_tokenizer, token_dtype, tokenizer_info
from headstart.errors import HeadstartError
from headstart.files import write_markdown, write_text_atomic
from headstart.layouts import choose
from headstart.models import backbone_of
from headstart.models.transformer import SIZES, float32_attention, mlp_hidden
from headstart.objectives.registry import build_model
from headstart.train.device import pick_device, pick_precision
from headstart.train.flops import matmul_params, peak_flops
from headstart.train.log import format_duration
from headstart.train.optim import is_hidden_matrix
from headstart.workflows.pretrain import calibrate
from headstart.workflows.pretrain_data import pretrain_flops_per_token, resolve_config, transformer_passes

TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022
DEFAULT_RECIPE = "gpt-tiny"
SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
SHAPE_FIELDS = ("model.size", "model.n_layer", "model.n_head", "model.n_embd")
HEAD_DIM = 64  # scaled shapes: one head per 64 channels
ASPECT = (32, 128)  # scaled shapes: channels per layer (GPT-2 and the named sizes: 32 to 64)
ASSUMED_MFU = 0.3  # only to guess, before timing anything, whether timing the planned model is quick
# Bytes autograd keeps per token for the backward, counted with saved-tensor hooks on this code:
# per layer and unit of n_embd (norm inputs, the QKV output, rotated queries and keys, the
# attention output), per layer and MLP hidden unit (SwiGLU: both halves of its up projection,
# the gate's activation, the product; GELU keeps half as much), and per unit of n_embd outside
# the layers (the embedding output, the final norm). bf16 saves less: the residual stream and the
# rotary embedding stay fp32 under autocast.
ACTIVATION_BYTES = {torch.float32: (48, 16, 12), torch.bfloat16: (32, 8, 10)}
# q, k, v and the output kept in float32 rather than bf16, net of what the bf16 kernel keeps
# besides (measured by the autograd test in tests/test_plan.py).
FLOAT32_ATTENTION_BYTES = 6
LOGIT_BYTES = 4  # per vocabulary entry of each scored token: the fp32 log-softmax


@dataclass
class Plan:
    """What ``headstart plan`` answers; every figure is for the planned model on this machine."""

    asked: str
    recipe: str
    overrides: list[str]  # added to ``headstart pretrain RECIPE`` to run the plan
    model: str
    params: int  # everything the loop trains
    non_embedding_params: int  # the backbone without its token embedding: Chinchilla's N here
    chinchilla_tokens: int
    steps: int
    tokens_per_step: int
    tokens: int
    flops_per_token: float
    flops: float
    tokens_per_s: float
    mfu: float
    seconds: float
    timing: str
    device: str
    precision: str
    memory: dict[str, float]  # bytes: weights, gradients, optimizer, activations, total
    memory_here: float
    optimal_params: float = 0.0  # for a budget: the compute-optimal non-embedding parameter count
    optimal_model: str = ""
    notes: list[str] = field(default_factory=list)
    # with --devices and --device-memory: every layout's bytes per device and sent per step, cheapest first
    layouts: list[dict[str, Any]] = field(default_factory=list)
    device_memory: float = 0.0


def parse_amount(text: str | float, flag: str) -> float:
    """``10M`` → 1e7; also ``1.5B``, ``500k``, ``1e15``, ``3P``: a positive number with an
    optional k, M, B (or G), T or P suffix."""
    raw = str(text).strip()
    suffix = raw[-1:].lower() if raw[-1:].isalpha() else ""
    try:
        value = float(raw[: len(raw) - len(suffix)]) * SUFFIXES[suffix]
    except (ValueError, KeyError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise HeadstartError(f"{flag} {text}: expected a positive number such as 10M, 1.5B or 1e15")
    return value


BYTE_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str, flag: str) -> float:
    """``80GiB`` → 85899345920.0; also ``80GB``, ``512MiB``, ``1.5TB`` or a plain number of bytes."""
    number = text.strip().lower().rstrip("bkmgtie") or "x"
    unit = text.strip().lower()[len(number) :]
    try:
        value = float(number) * BYTE_UNITS[unit]
    except (ValueError, KeyError):
        raise HeadstartError(f"{flag} {text}: expected a size such as 80GiB, 24GB or 512MiB") from None
    if not value > 0:
        raise HeadstartError(f"{flag} {text}: expected a positive size")
    return value


def chinchilla_tokens(params: float) -> float:
    """Compute-optimal training tokens for ``params`` parameters (Hoffmann et al. 2022)."""
    return TOKENS_PER_PARAM * params


def compute_optimal_params(flops: float) -> float:
    """The parameter count a budget of ``flops`` is best spent on: C = 6·N·D with D = 20·N."""
    return math.sqrt(flops / (6 * TOKENS_PER_PARAM))


def candidate_shapes() -> list[tuple[int, int, int]]:
    """(n_layer, n_head, n_embd): the named sizes, then every depth up to 64 at the widths of
    ``ASPECT`` channels per layer, in steps of one head."""
    low, high = ASPECT
    scaled = [
        (layers, width // HEAD_DIM, width)
        for layers in range(1, 65)
        for width in range(HEAD_DIM, high * layers + 1, HEAD_DIM)
        if width >= low * layers
    ]
    return [*SIZES.values(), *scaled]


def nearest_shape(model: ModelConfig, params: float) -> ModelConfig:
    """``model`` reshaped to the candidate whose matmul parameters (the non-embedding count but
    for the norms' gains) are nearest ``params`` by ratio; the first listed wins a tie."""
    shapes = [replace(model, size="", n_layer=n, n_head=h, n_embd=d) for n, h, d in candidate_shapes()]
    return min(shapes, key=lambda shape: abs(math.log(matmul_params(replace(shape, vocab_size=1)) / params)))


def describe_model(model: ModelConfig) -> str:
    kind = "decoder" if model.causal else "encoder"
    return f"{kind}, {model.n_layer} layers × {model.n_embd} wide, {model.n_head} heads"


def count_params(config: PretrainConfig) -> tuple[int, int]:
    """All parameters the loop trains and the backbone's without its embedding, counted on the
    meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters()), backbone_of(model).num_params(embedding=False)


def activation_bytes(
    model: ModelConfig, head_fraction: float, dtype: torch.dtype, device: torch.device, seq_len: int
) -> float:
    """Bytes one token of a transformer pass keeps for the backward:
    n_layer·(a·n_embd + b·hidden) + c·n_embd + 4·head_fraction·vocab, with (a, b, c) from
    ``ACTIVATION_BYTES`` for the precision and b halved for a GELU MLP; attention that runs in
    float32 under bf16 keeps ``FLOAT32_ATTENTION_BYTES`` more per n_embd."""
    per_embd, per_hidden, outside = ACTIVATION_BYTES[dtype]
    if float32_attention(device, dtype, seq_len, model.n_embd // model.n_head):
        per_embd += FLOAT32_ATTENTION_BYTES
    per_hidden = per_hidden if model.mlp == "swiglu" else per_hidden / 2
    layer = per_embd * model.n_embd + per_hidden * mlp_hidden(model)
    return model.n_layer * layer + outside * model.n_embd + LOGIT_BYTES * head_fraction * model.vocab_size


def optimizer_bytes(config: PretrainConfig, params: int) -> float:
    """AdamW keeps two fp32 moments a parameter; Muon one momentum for the blocks' matrices
    (and AdamW's two for the rest)."""
    if config.optim.name != "muon":
        return 8.0 * params
    with torch.device("meta"):
        model = build_model(config)
    hidden = sum(p.numel() for name, p in model.named_parameters() if is_hidden_matrix(name, p))
    return 8.0 * params - 4.0 * hidden


def token_activation_bytes(config: PretrainConfig, dtype: torch.dtype, device: torch.device) -> float:
    """Bytes one training token keeps for the backward, every pass the objective runs included."""
    passes = transformer_passes(config)
    return sum(times * activation_bytes(m, head, dtype, device, config.train.seq_len) for m, head, times in passes)


def memory_needed(config: PretrainConfig, params: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Bytes to train ``config``: the weights, kept in fp32 under autocast too, their fp32
    gradients, the optimizer's state, and what one micro-batch keeps for the backward (under
    bf16 with autocast's bf16 copy of the weights: 2 bytes a parameter)."""
    tokens = config.train.batch_size * config.train.seq_len
    per_token = token_activation_bytes(config, dtype, device)
    activations = tokens * per_token + (2 * params if dtype == torch.bfloat16 else 0)
    memory = {"weights": 4.0 * params, "gradients": 4.0 * params, "optimizer": optimizer_bytes(config, params),
              "activations": activations}  # fmt: skip
    return memory | {"total": sum(memory.values())}


def memory_here(device: torch.device) -> float:
    """Bytes of memory the device has: the GPU's, or the machine's RAM."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def word_tokenizer(vocab_size: int) -> Tokenizer:
    """A word-level tokenizer of exactly ``vocab_size`` tokens, the specials first: the stand-in
    vocabulary when no data is given (speed depends on its size, not its words)."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise HeadstartError(f"model.vocab_size={vocab_size}: expected more than {len(SPECIAL_TOKENS)}")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {f"w{i}": i for i in range(len(vocab), vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def random_shards(out: Path, tokenizer: Tokenizer, tokens: int) -> Path:
    """Shards of uniformly random tokens in both splits, to time training when no data is given."""
    info = tokenizer_info(tokenizer)
    ids = np.random.default_rng(0).integers(len(SPECIAL_TOKENS), info.vocab_size, tokens)
    with ShardWriter(out, token_dtype(info.vocab_size)) as writer:
        for split in ("train", "val"):
            writer.write(split, ids, 1, tokens)
        writer.commit(tokenizer.to_str(), {"tokenizer_hash": info.hash, "vocab_size": info.vocab_size, "eod_id": 0})
    return out


def timed_record(config: PretrainConfig, tokenizer: Tokenizer, steps: int) -> dict[str, float]:
    """The loop's log record over the warm half of ``steps`` steps of ``config`` here, on its data
    or on random tokens; everything it writes goes into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="headstart-plan-") as tmp:
        shards = config.data.shards
        if not shards:
            tokens = (config.train.batch_size + 2) * (config.train.seq_len + 1)
            shards = str(random_shards(Path(tmp) / "shards", tokenizer, tokens))
        probe = replace(config, init="", data=replace(config.data, shards=shards), run=replace(config.run, out_dir=tmp))
        return calibrate(probe, steps)


def stand_in(config: PretrainConfig, fits: Callable[[PretrainConfig], bool]) -> PretrainConfig:
    """``config`` itself when ``fits`` it, else the same family made smaller until it does:
    one micro-batch a step, then fewer layers (MFU hardly depends on depth), then smaller
    micro-batches, then narrower layers."""
    while not fits(config):
        model, train = config.model, config.train
        if train.grad_accum > 1:
            train = replace(train, grad_accum=1)
        elif model.n_layer > 1:
            model = replace(model, n_layer=model.n_layer // 2)
        elif train.batch_size > 1:
            train = replace(train, batch_size=train.batch_size // 2)
        elif model.n_head > 1:  # half the heads, each as wide
            model = replace(model, n_head=model.n_head // 2, n_embd=model.n_embd // model.n_head * (model.n_head // 2))
        else:
            break
        config = replace(config, model=model, train=train)
    return config


@dataclass
class Timing:
    """Training throughput here, and how it was found."""

    tokens_per_s: float
    mfu: float
    method: str


def time_training(
    config: PretrainConfig,
    tokenizer: Tokenizer,
    dtype: torch.dtype,
    device: torch.device,
    steps: int,
    seconds: float,
    console: Console | None,
) -> Timing:
    """Training throughput of ``config`` here: timed on the model itself when ``steps`` of it
    take about ``seconds`` or less and it fits in memory, else the FLOP/s (the MFU) of a smaller
    model of the same family carried over to this one's FLOPs per token."""
    rate, room = peak_flops(dtype, device) * ASSUMED_MFU, memory_here(device)

    def fits(candidate: PretrainConfig) -> bool:
        train = candidate.train
        work = steps * train.batch_size * train.grad_accum * train.seq_len * pretrain_flops_per_token(candidate)
        memory = memory_needed(candidate, count_params(candidate)[0], dtype, device)["total"]
        return work / rate <= seconds and memory <= 0.8 * room

    probe = stand_in(config, fits)
    if console is not None:
        console.print(f"timing {steps} training steps of {describe_model(probe.model)} here", highlight=False)
    record = timed_record(probe, tokenizer, steps)
    if probe == config:
        return Timing(record["tokens_per_s"], record["mfu"], f"calibrated: {steps} steps of this model here")
    flop_rate = record["tokens_per_s"] * pretrain_flops_per_token(probe)
    batch = f"micro-batch {probe.train.batch_size}"
    method = f"peak × MFU: {record['mfu']:.0%} measured on {describe_model(probe.model)}, {batch}, {steps} steps"
    return Timing(flop_rate / pretrain_flops_per_token(config), record["mfu"], method)


@dataclass
class Request:
    """What was asked: a model size, one budget (FLOPs or minutes of training here), or both."""

    params: float | None = None
    flops: float | None = None
    minutes: float | None = None

    @classmethod
    def parse(cls, params: str | float | None, flops: str | float | None, minutes: float | None) -> Request:
        if flops is not None and minutes is not None:
            raise HeadstartError("--flops and --minutes: give one budget, FLOPs or wall time")
        if minutes is not None and not minutes > 0:
            raise HeadstartError(f"--minutes {minutes}: expected a positive wall time")
        return cls(
            parse_amount(params, "--params") if params is not None else None,
            parse_amount(flops, "--flops") if flops is not None else None,
            minutes,
        )

    def describe(self) -> str:
        parts = [f"{_count(self.params)} parameters"] if self.params else []
        if self.flops:
            parts.append(f"{self.flops:.3g} FLOPs")
        if self.minutes:
            parts.append(f"{format_duration(self.minutes * 60)} of training here")
        return ", ".join(parts) or "the recipe's model"


def planned_model(recipe: str | None, overrides: list[str], request: Request) -> tuple[PretrainConfig, list[str]]:
    """The config to plan and the overrides that give it its shape. The shape nearest
    ``--params``; else the recipe's (or its overrides'); else, for a FLOP budget, the
    compute-optimal one; else gpt-tiny's. The recipe, gpt-tiny by default, sets the rest."""
    shaped = [o for o in overrides if o.split("=")[0] in SHAPE_FIELDS]
    if request.params and shaped:
        raise HeadstartError(f"--params with {shaped[0]}: --params chooses the shape; give one or the other")
    config = load_config(PretrainConfig, recipe or DEFAULT_RECIPE, overrides)
    if config.data.images or config.model.kind != "transformer":
        raise HeadstartError("plan: it plans transformers on text (recipes such as gpt-tiny and bert-tiny)")
    target = request.params
    if target is None and request.flops and recipe is None and not shaped:
        target = compute_optimal_params(request.flops)
    model, shape = config.model, []
    if target is not None:
        model = nearest_shape(model, target)
        shape = ["model.size=", f"model.n_layer={model.n_layer}", f"model.n_head={model.n_head}",
                 f"model.n_embd={model.n_embd}"]  # fmt: skip
    if config.train.seq_len > model.context:
        model = replace(model, context=config.train.seq_len)
        shape.append(f"model.context={model.context}")
    return replace(config, model=model), shape


def plan(
    recipe: str | None = None,
    overrides: list[str] | None = None,
    params: str | float | None = None,
    flops: str | float | None = None,
    minutes: float | None = None,
    calibration_steps: int = 12,
    calibration_seconds: float = 60.0,
    console: Console | None = None,
    devices: int | None = None,
    device_memory: str | None = None,
) -> Plan:
    """Plan a pretraining run (see :func:`planned_model` for which model): the tokens the budget
    buys it, or without a budget Chinchilla's 20 per parameter; their FLOPs, the wall time here
    from ``calibration_steps`` timed steps, and the memory; with ``devices`` and
    ``device_memory`` (e.g. "80GiB"), the memory per device of every layout (:mod:`headstart.layouts`)."""
    if (devices is None) != (device_memory is None):
        raise HeadstartError("--devices and --device-memory: give both, to plan the layout over several devices")
    memory_per_device = parse_bytes(device_memory, "--device-memory") if device_memory is not None else 0.0
    request = Request.parse(params, flops, minutes)
    if calibration_steps < 2:
        raise HeadstartError(f"--calibration-steps {calibration_steps}: expected at least 2 (half of them warm up)")
    overrides = list(overrides or [])
    config, shape = planned_model(recipe, overrides, request)
    tokenizer = (
        load_tokenizer(Path(config.data.shards) / "tokenizer.json")
        if config.data.shards
        else word_tokenizer(config.model.vocab_size or TokenizerConfig().vocab_size)
    )
    config = resolve_config(config, tokenizer_info(tokenizer))
    device = pick_device(config.train.device)
    dtype = pick_precision(config.train.precision, device)
    if devices is not None:  # refused before anything is timed
        layouts = choose(config, devices, memory_per_device, 0.0, 0.0, dtype)
    timing = time_training(config, tokenizer, dtype, device, calibration_steps, calibration_seconds, console)
    planned = assemble(config, request, timing, device, dtype, [recipe or DEFAULT_RECIPE, *overrides, *shape])
    if devices is not None:
        params = planned.params
        per_token, optimizer = token_activation_bytes(config, dtype, device), optimizer_bytes(config, params)
        layouts = choose(config, devices, memory_per_device, per_token, optimizer, dtype)
        planned.layouts = [
            {"layout": p.layout.name, "devices": p.layout.devices, "overrides": p.layout.overrides,
             "memory": p.memory, "sent_per_step": p.sent, "fits": p.fits}
            for p in layouts
        ]  # fmt: skip
        planned.device_memory = memory_per_device
    return planned


def assemble(
    config: PretrainConfig,
    request: Request,
    timing: Timing,
    device: torch.device,
    dtype: torch.dtype,
    command: list[str],
) -> Plan:
    """The figures for ``config`` once its throughput here is known; ``command``: the recipe and
    the overrides that make it."""
    params, non_embedding = count_params(config)
    per_token = pretrain_flops_per_token(config)
    model, train = config.model, config.train
    per_step = train.batch_size * train.grad_accum * train.seq_len
    spend = request.flops or (request.minutes or 0.0) * 60 * timing.tokens_per_s * per_token
    wanted = spend / per_token if spend else chinchilla_tokens(non_embedding)
    steps = max(1, int(wanted / per_step)) if spend else math.ceil(wanted / per_step)  # a budget is not exceeded
    optimal = compute_optimal_params(spend) if spend else 0.0
    notes = ["wall time: the training steps; evaluations and checkpoints come on top"]
    if config.embeddings.init == "skipgram":
        notes.append("not counted: the skip-gram warm start of the embeddings (embeddings.init=random skips it)")
    if not config.data.shards:
        notes.append(f"vocabulary of {model.vocab_size:,} assumed: give data.shards= (or model.vocab_size=)")
    return Plan(
        asked=request.describe(),
        recipe=command[0],
        overrides=[*command[1:], f"train.steps={steps}"],
        model=f"{describe_model(model)}, context {model.context}, vocabulary {model.vocab_size:,}",
        params=params,
        non_embedding_params=non_embedding,
        chinchilla_tokens=round(chinchilla_tokens(non_embedding)),
        steps=steps,
        tokens_per_step=per_step,
        tokens=steps * per_step,
        flops_per_token=per_token,
        flops=steps * per_step * per_token,
        tokens_per_s=timing.tokens_per_s,
        mfu=timing.mfu,
        seconds=steps * per_step / timing.tokens_per_s,
        timing=timing.method,
        device=str(device),
        precision=str(dtype).removeprefix("torch."),
        memory=memory_needed(config, params, dtype, device),
        memory_here=memory_here(device),
        optimal_params=optimal,
        optimal_model=describe_model(nearest_shape(model, optimal)) if optimal else "",
        notes=notes,
    )


def _figure(value: float) -> str:
    return f"{value:.3g}" if value < 999.5 else f"{value:.0f}"


def _count(value: float | None) -> str:
    """3.2M, 203M, 1.5B: three significant figures."""
    value = value or 0.0
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return _figure(value / scale) + suffix
    return _figure(value)


def _bytes(value: float) -> str:
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB")):
        if value >= scale:
            return f"{_figure(value / scale)} {unit}"
    return f"{_figure(value / 2**10)} KiB"


def _duration(seconds: float) -> str:
    """h:mm:ss, and in days beyond one."""
    days = f" ({_figure(seconds / 86400)} days)" if seconds >= 86400 else ""
    return format_duration(seconds) + days


def plan_rows(plan: Plan) -> list[tuple[str, str]]:
    """The plan as (what, figure) rows: the table's and the Markdown report's."""
    memory = plan.memory
    rows = [
        ("asked", plan.asked),
        ("model", plan.model),
        ("parameters", f"{_count(plan.non_embedding_params)} without the embedding ({_count(plan.params)} in all)"),
        ("Chinchilla tokens (20 per parameter)", _count(plan.chinchilla_tokens)),
    ]
    if plan.optimal_params:
        rows.append(("compute-optimal size for the budget", f"{_count(plan.optimal_params)} ({plan.optimal_model})"))
    rows += [
        ("planned tokens", f"{_count(plan.tokens)} = {plan.steps:,} steps × {plan.tokens_per_step:,} tokens"),
        ("FLOPs per token (training)", f"{plan.flops_per_token:.3g}"),
        ("training FLOPs", f"{plan.flops:.3g}"),
        ("throughput", f"{plan.tokens_per_s:,.0f} tokens/s, MFU {plan.mfu:.0%} ({plan.device}, {plan.precision})"),
        ("wall time", _duration(plan.seconds)),
        ("timed by", plan.timing),
        (
            "memory",
            f"{_bytes(memory['total'])} of {_bytes(plan.memory_here)} here: weights {_bytes(memory['weights'])}, "
            f"gradients {_bytes(memory['gradients'])}, AdamW {_bytes(memory['optimizer'])}, "
            f"activations {_bytes(memory['activations'])}",
        ),
        ("run it", " ".join(["headstart pretrain", plan.recipe, *plan.overrides])),
    ]
    for entry in plan.layouts:
        memory = entry["memory"]
        rows.append((
            f"per device, {entry['layout']}",
            f"{_bytes(memory['total'])} of {_bytes(plan.device_memory)}{'' if entry['fits'] else ' (does not fit)'}: "
            f"weights {_bytes(memory['weights'])}, gradients {_bytes(memory['gradients'])}, optimizer "
            f"{_bytes(memory['optimizer'])}, in flight {_bytes(memory['in_flight'])}, activations "
            f"{_bytes(memory['activations'])}; sends {_bytes(entry['sent_per_step'])} a step",
        ))  # fmt: skip
    if plan.layouts:
        fitting = [entry for entry in plan.layouts if entry["fits"]]
        if fitting:
            best = fitting[0]
            launch = f"torchrun --nproc_per_node={best['devices']} -m " if best["devices"] > 1 else ""
            command = " ".join([f"{launch}headstart pretrain", plan.recipe, *plan.overrides, *best["overrides"]])
            rows.append(("layout", f"{best['layout']}, the least traffic that fits: {command}"))
        else:
            advice = "more devices, a smaller train.batch_size (with grad_accum), or a smaller model"
            rows.append(("layout", f"none fits: {advice}"))
    return rows


def plan_table(plan: Plan) -> Table:
    notes = "\n".join(plan.notes)
    table = Table(title="plan", show_header=False, title_justify="left", caption=notes, caption_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for what, figure in plan_rows(plan):
        table.add_row(what, figure)
    return table


def check_out(path: Path) -> Path:
    """``path`` if it names a format the plan is written in (checked before any timing)."""
    if path.suffix not in (".json", ".md"):
        raise HeadstartError(f"--out {path}: expected a .json or .md file")
    return path


def write_plan(plan: Plan, path: Path) -> Path:
    """The plan as JSON (``.json``) or a Markdown table (``.md``), written atomically."""
    if check_out(path).suffix == ".json":
        return write_text_atomic(path, json.dumps(asdict(plan), indent=1) + "\n")
    lines = ["# Plan", "", "| | |", "|---|---|", *(f"| {what} | {figure} |" for what, figure in plan_rows(plan))]
    return write_markdown(path, [*lines, "", *(f"- {note}" for note in plan.notes)])
