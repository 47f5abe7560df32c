"""The Python API; the CLI is a thin shell over these functions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from headstart.config import FinetuneConfig, PrepareConfig, PretrainConfig, StudyConfig, load_config
from headstart.data.prepare import PrepareReport
from headstart.data.prepare import prepare as _prepare
from headstart.data.sources import ReadOptions, SkipLog, read_documents
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.embed import embed_texts, save_array
from headstart.errors import HeadstartError
from headstart.evaluate import evaluate_checkpoint
from headstart.files import write_markdown
from headstart.generate import fill_mask as _fill_mask
from headstart.generate import sample
from headstart.models import backbone_of
from headstart.models.pretraining import ElectraPair
from headstart.train.checkpoint import load_pretrained
from headstart.train.loop import LoopResult
from headstart.workflows.finetune import FinetuneResult
from headstart.workflows.finetune import finetune as _finetune
from headstart.workflows.pretrain import pretrain as _pretrain

if TYPE_CHECKING:
    from headstart.plan import Plan
    from headstart.transfer.mismatch import Mismatch

Overrides = list[str] | dict[str, Any] | None
MASK_MARKER = "<mask>"


def prepare(
    config: str | PrepareConfig | None = None, overrides: Overrides = None, console: Console | None = None
) -> PrepareReport:
    """Raw data → token shards. ``config``: a PrepareConfig, a YAML file, or None (overrides only)."""
    if not isinstance(config, PrepareConfig):
        config = load_config(PrepareConfig, config, overrides)
    return _prepare(config, console=console)


def pretrain(
    recipe: str | PretrainConfig,
    overrides: Overrides = None,
    resume: bool = False,
    minutes: float | None = None,
    console: Console | None = None,
    quiet: bool = False,
) -> LoopResult:
    """Pretrain from a recipe name / YAML file / PretrainConfig, with ``section.field=value`` overrides.

    ``minutes`` sets the step count to what fits that wall time here, the skip-gram warm start
    included, so the schedule completes."""
    config = recipe if isinstance(recipe, PretrainConfig) else load_config(PretrainConfig, recipe, overrides)
    return _pretrain(config, resume=resume, console=console, quiet=quiet, minutes=minutes)


def finetune(
    recipe: str | FinetuneConfig, overrides: Overrides = None, console: Console | None = None, quiet: bool = False
) -> FinetuneResult:
    """Fine-tune a checkpoint (or ``init=scratch``: the same architecture, random init) on a labelled task."""
    config = recipe if isinstance(recipe, FinetuneConfig) else load_config(FinetuneConfig, recipe, overrides)
    return _finetune(config, console=console, quiet=quiet)


def transfer(study: str | StudyConfig, overrides: Overrides = None, console: Console | None = None) -> Path:
    """Run (or resume) a transfer study; returns its report.md."""
    from headstart.transfer.study import run_study

    config = study if isinstance(study, StudyConfig) else load_config(StudyConfig, study, overrides)
    return run_study(config, console=console) / "report.md"


def pilot(
    study: str | StudyConfig,
    minutes: float,
    forecast_at: int = 2000,
    smallest: int = 50,
    overrides: Overrides = None,
    console: Console | None = None,
) -> Path:
    """A study sized to ``minutes``: budgets ×4 from ``smallest`` up to half of ``forecast_at``,
    seed rounds until the time is up, then each init's forecast at ``forecast_at`` labels and
    whether pretraining pays; returns pilot.md."""
    from headstart.transfer.pilot import run_pilot

    config = study if isinstance(study, StudyConfig) else load_config(StudyConfig, study, overrides)
    return run_pilot(config, minutes, forecast_at, smallest, console=console)


def evaluate(
    checkpoint: str | Path,
    data: list[str] | None = None,
    split: str = "val",
    seq_len: int | None = None,
    max_windows: int = 0,
    text_mode: str = "line",
    console: Console | None = None,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte of a checkpoint on shards or raw text."""
    result = evaluate_checkpoint(checkpoint, data, split, seq_len, max_windows, text_mode)
    if console is not None:
        console.print(
            "  ".join(
                f"{k} {v:,.4f}" if k not in ("windows", "tokens") else f"{k} {v:,.0f}" for k, v in result.items()
            ),
            highlight=False,
        )
    return result


def generate(
    checkpoint: str | Path,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.95,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` with a causal checkpoint; returns only the new text."""
    problems = [
        *([] if max_new_tokens >= 1 else [f"--max-new-tokens {max_new_tokens}: expected at least 1"]),
        *([] if temperature >= 0 else [f"--temperature {temperature}: expected 0 (greedy) or more"]),
        *([] if top_k >= 0 else [f"--top-k {top_k}: expected 0 (off) or more"]),
        *([] if 0 < top_p <= 1 else [f"--top-p {top_p}: expected 0 < p ≤ 1"]),
    ]
    if problems:
        raise HeadstartError("; ".join(problems))
    model, _, folder = load_pretrained(checkpoint)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    info = tokenizer_info(tokenizer)
    ids = [info.eod_id, *tokenizer.encode(prompt, add_special_tokens=False).ids]
    if len(ids) > model.config.context:
        raise HeadstartError(f"--prompt: {len(ids)} tokens, longer than the model's context of {model.config.context}")
    new = sample(model, ids, max_new_tokens, temperature, top_k, top_p, seed, stop_token=info.eod_id)
    return tokenizer.decode([t for t in new if t != info.eod_id], skip_special_tokens=False)


def fill_mask(checkpoint: str | Path, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Top predictions (token text, probability) for each ``<mask>`` in ``text``."""
    if top_k < 1:
        raise HeadstartError(f"--top-k {top_k}: expected at least 1 prediction per <mask>")
    model, _, folder = load_pretrained(checkpoint)
    if isinstance(model, ElectraPair):  # ELECTRA's generator is its masked LM
        model = model.generator
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    info = tokenizer_info(tokenizer)
    ids: list[int] = []
    for i, part in enumerate(text.split(MASK_MARKER)):  # literal text never encodes to specials
        ids += ([info.mask_id] if i else []) + tokenizer.encode(part, add_special_tokens=False).ids
    if len(ids) > model.config.context:
        raise HeadstartError(f"--text: {len(ids)} tokens, longer than the model's context of {model.config.context}")
    predictions = _fill_mask(model, ids, info.mask_id, top_k)
    return [[(tokenizer.decode([t]), p) for t, p in row] for row in predictions]


def embed(
    checkpoint: str | Path,
    inputs: list[str],
    out: str | Path,
    field: str = "text",
    pooling: str = "mean",
    console: Console | None = None,
) -> Path:
    """Sentence embeddings of every line (text files) or ``field`` (JSONL) of ``inputs``, in
    order, as an (N, n_embd) float32 .npy at ``out``; the backbone is the checkpoint's (SimCSE:
    before its projection)."""
    model, _, folder = load_pretrained(checkpoint)
    if not (folder / "tokenizer.json").is_file():
        raise HeadstartError(f"checkpoint {checkpoint}: an image checkpoint; embed reads text checkpoints")
    skipped = SkipLog()
    texts = list(read_documents(inputs, ReadOptions(text_mode="line", jsonl_field=field), skipped))
    if not texts:
        raise HeadstartError(f"inputs {' '.join(inputs)}: no text found (field {field!r} for JSONL)")
    vectors = embed_texts(backbone_of(model), load_tokenizer(folder / "tokenizer.json"), texts, pooling)  # type: ignore[arg-type]
    path = Path(out)
    save_array(vectors, path)
    if console is not None:
        console.print(f"{len(texts):,} embeddings of width {vectors.shape[1]} → {path}", highlight=False)
        for line in skipped.lines():
            console.print(f"skipped {line}", highlight=False)
    return path


def mismatch(
    source: str,
    target: str,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    field: str = "text",
    text_mode: str = "line",
    pairs: str | Path | None = None,
    worthwhile: float = 1.0,
    console: Console | None = None,
) -> Mismatch:
    """How far ``target`` is from ``source`` (and, given a checkpoint, from what it learned), with a
    recommendation on continued pretraining calibrated on measured gains (headstart's, plus the
    YAML list ``pairs`` of your own); ``out``: also write it as a Markdown report."""
    from headstart.transfer.adaptation_gain import MEASURED, read_pairs
    from headstart.transfer.mismatch import measure_mismatch, print_mismatch, report_lines

    if not worthwhile > 0:
        raise HeadstartError(f"--worthwhile {worthwhile}: expected a positive gain in points of the task's metric")
    measured = read_pairs(MEASURED) + (read_pairs(pairs) if pairs is not None else [])
    options = ReadOptions(text_mode=text_mode, jsonl_field=field)  # type: ignore[arg-type]
    result = measure_mismatch(source, target, checkpoint, options, measured, worthwhile)
    if console is not None:
        print_mismatch(result, console)
    if out is not None:
        path = write_markdown(Path(out), report_lines(result))
        if console is not None:
            console.print(f"report: {path}", highlight=False)
    return result


def plan(
    recipe: str | None = None,
    overrides: list[str] | None = None,
    params: str | float | None = None,
    flops: str | float | None = None,
    minutes: float | None = None,
    out: str | Path | None = None,
    calibration_steps: int = 12,
    console: Console | None = None,
    devices: int | None = None,
    device_memory: str | None = None,
) -> Plan:
    """Plan a pretraining run: for a model size (``params``, e.g. "10M") or a budget (``flops``,
    or ``minutes`` of training here) the compute-optimal tokens or model, its FLOPs, its wall
    time here (a short calibration) and its memory; with ``devices`` and ``device_memory``
    ("80GiB") the memory per device of each layout and the one to use; ``out``: also write it
    (.json or .md)."""
    from headstart.plan import check_out, write_plan
    from headstart.plan import plan as _plan

    target = check_out(Path(out)) if out is not None else None
    result = _plan(
        recipe, overrides, params, flops, minutes, calibration_steps, console=console, devices=devices,
        device_memory=device_memory,
    )  # fmt: skip
    if target is not None:
        path = write_plan(result, target)
        if console is not None:
            console.print(f"plan: {path}", highlight=False)
    return result


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a checkpoint as a transformers model directory (decoder: Llama, encoder: EuroBERT)
    with its tokenizer, for ``AutoModelFor*`` / ``AutoTokenizer``; returns ``out``."""
    from headstart.export import export_hf as _export_hf

    return _export_hf(checkpoint, out)


def import_hf(source: str | Path, out: str | Path) -> Path:
    """A transformers Llama or EuroBERT directory as a checkpoint under ``out`` (a run directory
    that ``init=`` takes); returns the checkpoint's directory."""
    from headstart.export import import_hf as _import_hf

    return _import_hf(source, out)


def quickstart(
    out: str | Path = "runs/quickstart", minutes: float = 3.0, console: Console | None = None, seeds: int = 5
) -> Path:
    """The whole path offline on the standard library; returns the report's path."""
    from headstart.quickstart import run_quickstart

    return run_quickstart(Path(out), minutes=minutes, console=console or Console(stderr=True), seeds=seeds)


__all__ = [
    "embed",
    "evaluate",
    "export_hf",
    "fill_mask",
    "finetune",
    "generate",
    "import_hf",
    "mismatch",
    "plan",
    "prepare",
    "pretrain",
    "quickstart",
    "transfer",
]
