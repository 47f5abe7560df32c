"""The ``headstart`` command: each verb parses its arguments and calls one function of ``headstart.api``."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from headstart.config import FinetuneConfig, PrepareConfig, PretrainConfig, StudyConfig, recipe_names
from headstart.errors import HeadstartError

EXAMPLES = """\
examples:
  headstart quickstart                                   # the whole path offline, a few minutes
  headstart prepare corpus.txt --out data/corpus --tokenizer bpe --vocab-size 8192
  headstart pretrain gpt-tiny data.shards=data/corpus train.steps=2000
  headstart pretrain bert-tiny data.shards=data/corpus --resume
  headstart pretrain simclr-fmnist train.steps=500
  headstart finetune sst2 init=runs/mlm-corpus budget=500
  headstart transfer study.yaml                          # inits × label budgets × seeds → report.md + plots
  headstart pilot study.yaml --minutes 20                # does pretraining pay here? forecast at 2,000 labels
  headstart evaluate runs/clm-corpus --data data/corpus
  headstart generate runs/clm-corpus --prompt "def main(" --max-new-tokens 80
  headstart fill-mask runs/mlm-corpus --text "the <mask> sat on the mat"
  headstart pretrain bert-tiny objective.name=simcse init=runs/mlm-corpus data.shards=data/sentences
  headstart embed runs/simcse-sentences sentences.txt --out embeddings.npy
  headstart mismatch wiki.txt biomed/ --checkpoint runs/clm-corpus --out mismatch.md
  headstart finetune fmnist init=runs/simclr-fashion_mnist budget=100
  headstart plan --params 10M                            # Chinchilla tokens, FLOPs, wall time here, memory
  headstart plan bert-tiny --hours 2 --out plan.md       # what two hours of training here buy
  headstart plan --params 1.5B --devices 8 --device-memory 80GiB   # the layout that fits 8 GPUs
  headstart export runs/clm-corpus --to hf --out hf/clm-corpus   # transformers' AutoModelForCausalLM loads it
  headstart import-hf hf/clm-corpus --out runs/from-hf           # then pretrain / finetune init=runs/from-hf
"""


Subparsers = argparse._SubParsersAction  # what add_subparsers returns


class ConfigHelp(argparse.Action):
    """``--help-config``: every field of the verb's config with its type, default and meaning, then exit."""

    def __init__(self, option_strings: list[str], dest: str, config: type, **kwargs: object) -> None:
        self.config = config
        super().__init__(option_strings, dest, nargs=0, help="list every config field, its default and meaning")

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: object, values: object, option: object = None
    ) -> None:
        from headstart.config_docs import describe_config

        print(f"{self.config.__name__}: " + " ".join((self.config.__doc__ or "").split()))
        print("\n".join(describe_config(self.config)))
        parser.exit()


def _add_overrides(parser: argparse.ArgumentParser, config: type) -> None:
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value", help="config overrides, e.g. model.n_layer=6"
    )
    parser.add_argument("--help-config", action=ConfigHelp, config=config)


def _prepare_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "prepare",
        help="tokenize raw text into memory-mapped token shards",
        description="Read text / JSONL / Parquet / gz files, globs, directories or hf:NAME datasets; train or "
        "reuse a tokenizer; write train.bin, val.bin, meta.json and tokenizer.json to --out.",
    )
    p.add_argument("inputs", nargs="*", help="files, globs, directories, or hf:NAME")
    p.add_argument("--out", help="output shard directory")
    p.add_argument("--config", help="a YAML file with prepare settings (flags and overrides win)")
    p.add_argument("--val", dest="val_inputs", nargs="+", help="separate validation inputs")
    p.add_argument("--tokenizer", choices=["bpe", "wordpiece", "unigram", "char"], help="tokenizer kind to train")
    p.add_argument("--tokenizer-path", help="reuse this tokenizer.json instead of training one")
    p.add_argument("--vocab-size", type=int, help="vocabulary size to train (default 8192)")
    p.add_argument(
        "--extend-vocab", type=int, help="with --tokenizer-path: add up to N tokens for the corpus's most split words"
    )
    p.add_argument("--text-mode", choices=["line", "block", "file"], help="a document per line, block or file")
    p.add_argument(
        "--field",
        dest="jsonl_field",
        help="JSONL field holding the text, or a list of words (default: text); a,b: a document per field",
    )
    p.add_argument("--column", dest="parquet_column", help="Parquet column holding the text (default: text)")
    p.add_argument("--val-fraction", type=float, help="share held out for validation (default 0.05)")
    p.add_argument("--val-mode", choices=["documents", "tail"], help="hold out whole documents, or the last tokens")
    p.add_argument("--invalid-utf8", choices=["skip", "fail"], help="skip (and count) or fail on bad UTF-8")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: one per core)")
    _add_overrides(p, PrepareConfig)


def _pretrain_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "pretrain",
        help="pretrain a model: causal / masked LM / ELECTRA on prepared shards, SimCLR / MAE on images",
        description=f"Recipes: {', '.join(recipe_names())}. Any config field can be overridden as "
        "section.field=value; the resolved config is saved with every checkpoint.",
    )
    p.add_argument("recipe", help="a shipped recipe name or a YAML file")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    p.add_argument(
        "--minutes",
        type=float,
        help="set train.steps to what fits this wall-time budget here, warm start included (a short timed probe)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    _add_overrides(p, PretrainConfig)


def _finetune_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "finetune",
        help="fine-tune a checkpoint (or the same model from scratch) on a labelled task",
        description="Text classification from JSONL records (task.train, task.eval); a class-stratified label "
        "budget drawn from the seed; early stopping on a validation split carved from the budget. "
        "init=scratch with architecture=CHECKPOINT trains the same architecture from random weights.",
    )
    p.add_argument("recipe", help="a shipped recipe name (e.g. sst2) or a YAML file")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    _add_overrides(p, FinetuneConfig)


def _transfer_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "transfer",
        help="the transfer study: inits × label budgets × seeds, with a report of the head start",
        description="Fine-tune every init (checkpoints, scratch, skip-gram and n-gram references) at every label "
        "budget and seed, each with the same sweep chosen on a validation split carved from the budget; writes "
        "results.jsonl, report.md and PNG plots. Rerunning skips the cells already finished.",
    )
    p.add_argument("study", help="a study YAML file")
    _add_overrides(p, StudyConfig)


def _pilot_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "pilot",
        help="a study sized to a wall-time budget: does pretraining pay here, and how many labels will it take?",
        description="Runs the study's inits over three or more budgets growing ×4 from --smallest up to half of "
        "--forecast-at, seed by seed (every budget for one seed, then the next) while another round fits in "
        "--minutes; then forecasts each init's learning curve at --forecast-at labels with a 95% interval and says "
        "whether pretraining pays there (pilot.md).",
    )
    p.add_argument("study", help="a study YAML file: its checkpoint and scratch inits, sweep and task")
    p.add_argument("--minutes", type=float, required=True, help="wall-time budget for the whole pilot")
    p.add_argument("--forecast-at", type=int, default=2000, help="the label budget to forecast (default 2,000)")
    p.add_argument("--smallest", type=int, default=50, help="the first budget of the ladder (default 50)")
    _add_overrides(p, StudyConfig)


def _evaluate_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "evaluate",
        help="validation loss, perplexity and bits per byte of a checkpoint",
        description="Evaluate on prepared shards (their val split) or on raw text files tokenized on the fly.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory or a run directory (its newest checkpoint)")
    p.add_argument("--data", nargs="+", help="shard directory or raw inputs (default: the run's own shards)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split of prepared shards")
    p.add_argument("--seq-len", type=int, help="window length (default: the run's)")
    p.add_argument("--max-windows", type=int, default=0, help="cap on windows scored (0: all)")
    p.add_argument("--text-mode", default="line", choices=["line", "block", "file"], help="for raw inputs")


def _generate_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser("generate", help="sample text from a causal checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1)


def _fill_mask_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser("fill-mask", help="predict <mask> tokens with a masked-LM checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--text", required=True, help="text with one or more <mask> tokens")
    p.add_argument("--top-k", type=int, default=5)


def _embed_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "embed",
        help="sentence embeddings from a text checkpoint, as a .npy array",
        description="One mean-pooled embedding per line of text files (or per record's --field of JSONL), in "
        "order; empty lines are skipped and counted.",
    )
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="text or JSONL files")
    p.add_argument("--out", required=True, help="the .npy file to write")
    p.add_argument("--field", default="text", help="JSONL field holding the text")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls", "last", "max"])


def _mismatch_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "mismatch",
        help="how far a target corpus is from the source: whether to continue pretraining on it",
        description="Vocabulary overlap of the top-10k words; with --checkpoint, tokenizer fertility, unknown "
        "rate and perplexity on both sides; the distance between their embeddings (MMD, proxy A-distance); "
        "and a recommendation on domain-adaptive pretraining, its gain forecast from the gains measured on other "
        "targets (add yours with --pairs). Seeded samples, under a minute.",
    )
    p.add_argument("source", help="the pretraining corpus: a text or JSONL file, a glob or a directory")
    p.add_argument("target", help="the target domain's corpus, in the same forms")
    p.add_argument("--checkpoint", help="a text checkpoint or run directory (its newest checkpoint)")
    p.add_argument("--out", help="also write the report here as Markdown")
    p.add_argument("--field", default="text", help="JSONL field holding the text, or a list of words")
    p.add_argument(
        "--text-mode", default="line", choices=["line", "block", "file"], help="a document per line, block, file"
    )
    p.add_argument("--pairs", help="a YAML list of your own measured adaptation gains, added to headstart's")
    p.add_argument("--worthwhile", type=float, default=1.0, help="the least gain (metric points) worth a continued run")


def _plan_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "plan",
        help="compute-optimal tokens or model size for a budget, with FLOPs, wall time here and memory",
        description="For a model size (--params, non-embedding) the compute-optimal tokens (Chinchilla: 20 per "
        "parameter); for a FLOP budget the compute-optimal model; for a wall time what it buys the recipe's "
        "model here. Then the training FLOPs, the wall time from a short timed run on this machine, and the "
        "memory. Recipe default: gpt-tiny.",
    )
    p.add_argument("recipe", nargs="?", help="a recipe or YAML file that sets the model and its training")
    p.add_argument("--params", help="model size in non-embedding parameters: 10M, 124M, 1.5B")
    p.add_argument("--flops", help="compute budget in training FLOPs: 1e15, 3P")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-time budget for training here")
    budget.add_argument("--hours", type=float, help="wall-time budget for training here")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (train.seq_len)")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch (train.batch_size)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="train.precision")
    p.add_argument("--calibration-steps", type=int, default=12, help="training steps timed here (default 12)")
    p.add_argument("--out", help="also write the plan here (.json or .md)")
    p.add_argument("--devices", type=int, help="devices to spread the run over: the memory per device of each layout")
    p.add_argument("--device-memory", help="memory of one device, e.g. 80GiB (with --devices)")
    _add_overrides(p, PretrainConfig)


def _export_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face transformers model directory",
        description="A decoder as Llama, or Qwen3 with QK-norm (AutoModelForCausalLM), an encoder as EuroBERT "
        "(AutoModelForMaskedLM), with its tokenizer (AutoTokenizer): safetensors, float32, the same logits. "
        "Needs transformers ≥ 5.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory or a run directory (its newest checkpoint)")
    p.add_argument("--to", choices=["hf"], default="hf", help="the format: hf (Hugging Face transformers)")
    p.add_argument("--out", required=True, help="the directory to write (new or empty)")


def _import_hf_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "import-hf",
        help="turn a transformers Llama, Qwen3 or EuroBERT directory into a checkpoint for init=",
        description="Reads config.json, safetensors weights and tokenizer.json; refuses, naming the field, what "
        "headstart's transformer cannot hold exactly (grouped-query attention, biases, another activation).",
    )
    p.add_argument("source", help="a transformers model directory")
    p.add_argument("--out", required=True, help="the run directory to write (new or empty); init= takes it")


def _quickstart_arguments(verbs: Subparsers) -> None:
    p = verbs.add_parser(
        "quickstart",
        help="pretrain and evaluate on the Python standard library, offline, in a few minutes",
        description="No downloads: the corpus is this Python installation's own standard library.",
    )
    p.add_argument("--out", default="runs/quickstart", help="run directory")
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining wall-time budget")
    p.add_argument("--seeds", type=int, default=5, help="seeds per study cell (default 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headstart",
        description="Self-supervised pretraining and transfer, with the head start measured.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS.values():
        verb.arguments(verbs)
    return parser


def _prepare_overrides(args: argparse.Namespace) -> dict:
    flags = {
        key: getattr(args, key)
        for key in (
            "inputs",
            "val_inputs",
            "out",
            "text_mode",
            "jsonl_field",
            "parquet_column",
            "val_fraction",
            "val_mode",
            "invalid_utf8",
            "workers",
        )
        if getattr(args, key) not in (None, [])
    }
    tokenizer = {
        key: value
        for key, value in (
            ("kind", args.tokenizer),
            ("path", args.tokenizer_path),
            ("vocab_size", args.vocab_size),
            ("extend", args.extend_vocab),
        )
        if value is not None
    }
    if tokenizer:
        flags["tokenizer"] = tokenizer
    return flags


def _prepare(args: argparse.Namespace, console: Console) -> int:
    from headstart import api
    from headstart.config import merge, parse_overrides

    api.prepare(args.config, merge(parse_overrides(args.overrides), _prepare_overrides(args)), console=console)
    return 0


def _pretrain(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    result = api.pretrain(
        args.recipe, args.overrides, resume=args.resume, minutes=args.minutes, console=console, quiet=args.quiet
    )
    if result.interrupted:
        console.print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}; rerun with --resume")
        return 130
    console.print(
        f"{result.step:,} steps, {result.tokens_seen:,} tokens, {result.flops / 1e12:,.1f} TFLOPs in "
        f"{result.elapsed_s / 60:.1f} min; checkpoint {result.checkpoint}",
        highlight=False,
    )
    return 0


def _finetune(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    result = api.finetune(args.recipe, args.overrides, console=console, quiet=args.quiet)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    console.print(f"{scores}  (best validation step {result.best_step}; {result.run_dir / 'result.json'})")
    return 0


def _transfer(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    console.print(f"report: {api.transfer(args.study, args.overrides, console=console)}", highlight=False)
    return 0


def _pilot(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    path = api.pilot(args.study, args.minutes, args.forecast_at, args.smallest, args.overrides, console=console)
    console.print(f"pilot: {path}", highlight=False)
    return 0


def _evaluate(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    api.evaluate(args.checkpoint, args.data, split=args.split, seq_len=args.seq_len, max_windows=args.max_windows,
                 text_mode=args.text_mode, console=console)  # fmt: skip
    return 0


def _generate(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    for i in range(args.samples):
        sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed + i}
        text = api.generate(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens, **sampling)
        print(args.prompt + text)
        if i + 1 < args.samples:
            print("---")
    return 0


def _fill_mask(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    for position, predictions in enumerate(api.fill_mask(args.checkpoint, args.text, top_k=args.top_k)):
        print(f"<mask> {position + 1}: " + "  ".join(f"{tok!r} {p:.3f}" for tok, p in predictions))
    return 0


def _embed(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    api.embed(args.checkpoint, args.inputs, args.out, field=args.field, pooling=args.pooling, console=console)
    return 0


def _mismatch(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    api.mismatch(args.source, args.target, args.checkpoint, args.out, field=args.field, text_mode=args.text_mode,
                 pairs=args.pairs, worthwhile=args.worthwhile, console=console)  # fmt: skip
    return 0


def _export(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    console.print(f"exported: {api.export_hf(args.checkpoint, args.out)}", highlight=False)
    return 0


def _import_hf(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    console.print(f"checkpoint: {api.import_hf(args.source, args.out)}", highlight=False)
    return 0


def _quickstart(args: argparse.Namespace, console: Console) -> int:
    from headstart import api

    api.quickstart(args.out, minutes=args.minutes, console=console, seeds=args.seeds)
    return 0


def parse_with_overrides_anywhere(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``section.field=value`` overrides after the flags too (``pretrain
    gpt-tiny --minutes 5 train.seed=1``), which argparse leaves over once a flag has ended the
    positionals; anything else left over is an error, as argparse would say."""
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


def run(argv: Sequence[str] | None = None) -> int:
    from headstart.train.distributed import leave, process_rank

    parser = build_parser()
    args = parse_with_overrides_anywhere(parser, argv)
    console = Console(stderr=True, quiet=process_rank() > 0)  # under torchrun, rank 0 speaks for all
    if args.verb is None:
        parser.print_help()
        return 0
    code = VERBS[args.verb].handle(args, console)
    leave()
    return code


def _plan(args: argparse.Namespace, console: Console) -> int:
    """``headstart plan``: its flags as overrides, the plan as a table on stdout."""
    from headstart import api
    from headstart.plan import plan_table

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe and "=" in recipe:  # no recipe, only overrides
        recipe, overrides = None, [recipe, *overrides]
    for key, value in (("seq_len", args.seq_len), ("batch_size", args.batch_size), ("precision", args.precision)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    minutes = args.hours * 60 if args.hours is not None else args.minutes
    result = api.plan(
        recipe, overrides, args.params, args.flops, minutes, args.out, args.calibration_steps, console,
        devices=args.devices, device_memory=args.device_memory,
    )  # fmt: skip
    Console().print(plan_table(result))
    return 0


@dataclass(frozen=True)
class Verb:
    """A verb: its subparser and arguments, and what runs it."""

    arguments: Callable[[Subparsers], None]
    handle: Callable[[argparse.Namespace, Console], int]


VERBS: dict[str, Verb] = {
    "prepare": Verb(_prepare_arguments, _prepare),
    "pretrain": Verb(_pretrain_arguments, _pretrain),
    "finetune": Verb(_finetune_arguments, _finetune),
    "transfer": Verb(_transfer_arguments, _transfer),
    "pilot": Verb(_pilot_arguments, _pilot),
    "evaluate": Verb(_evaluate_arguments, _evaluate),
    "generate": Verb(_generate_arguments, _generate),
    "fill-mask": Verb(_fill_mask_arguments, _fill_mask),
    "embed": Verb(_embed_arguments, _embed),
    "mismatch": Verb(_mismatch_arguments, _mismatch),
    "plan": Verb(_plan_arguments, _plan),
    "export": Verb(_export_arguments, _export),
    "import-hf": Verb(_import_hf_arguments, _import_hf),
    "quickstart": Verb(_quickstart_arguments, _quickstart),
}


OS_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path and the cause (what was written stays as
    it was: every output is written to a temporary sibling first)."""
    cause = OS_CAUSES.get(exc.errno or 0, exc.strerror or exc.__class__.__name__)
    where = exc.filename if exc.filename is not None else "a file"
    return (
        f"cannot write {where}: {cause}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        else f"{where}: {cause}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except HeadstartError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        code = 1
    except OSError as exc:  # a full, read-only or forbidden disk: the path and the cause, no traceback
        Console(stderr=True).print(f"[bold red]error:[/] {os_error_line(exc)}", highlight=False, soft_wrap=True)
        code = 1
    except KeyboardInterrupt as stop:
        Console(stderr=True).print(str(stop) or "interrupted", highlight=False, soft_wrap=True)
        code = 130
    sys.exit(code)
