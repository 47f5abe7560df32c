"""Typed run configs: dataclasses, YAML recipes, dotted command-line overrides.

A config is plain data. It is built from a shipped recipe (``gpt-tiny``) or a YAML file,
then ``section.field=value`` overrides are applied, and every key and type is checked so a
typo fails with one line that names the field and suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from headstart.errors import HeadstartError
from headstart.files import write_text_atomic

T = TypeVar("T")


@dataclass
class ModelConfig:
    """The backbone's kind and shape. ``size`` names a transformer preset; explicit fields
    override it. ``mamba`` (causal only) reads the shared fields and its own below, not
    ``n_head``, ``mlp``, ``mlp_hidden``, ``rope_theta`` or ``qk_norm``."""

    kind: Literal["transformer", "mamba"] = "transformer"  # transformer (decoder or encoder) or mamba (decoder)
    size: str = ""  # a named preset (see models/transformer.py SIZES); explicit fields override it
    causal: bool = True  # decoder (true) or encoder (false); most objectives set it
    vocab_size: int = 0  # 0: take it from the tokenizer
    n_layer: int = 4  # blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width of the residual stream
    context: int = 256  # longest sequence the model reads
    mlp: Literal["swiglu", "gelu"] = "swiglu"  # the feed-forward block's activation
    mlp_hidden: int = 0  # 0: 4·n_embd for GELU, the same parameter count for SwiGLU
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"  # normalisation before each sub-block
    rope_theta: float = 10000.0  # base of the rotary position frequencies
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention (bounds the logits)
    dropout: float = 0.0  # on attention weights and residual branches while training
    tie_embeddings: bool = True  # the output head shares the token embedding
    init_std: float = 0.02  # standard deviation of the initial weights
    d_state: int = 16  # mamba: state size per channel
    d_conv: int = 4  # mamba: width of the causal depthwise convolution
    expand: int = 2  # mamba: inner width = expand · n_embd
    dt_rank: int = 0  # mamba: rank of the step-size projection; 0: ceil(n_embd / 16)
    scan_chunk: int = 16  # mamba: steps per chunk of the scan (one compiled loop each)
    scan_compiled: bool = True  # mamba: torch.compile the scan's chunks (false: op by op, no compiler needed)


@dataclass
class ObjectiveConfig:
    """What the run optimises. Text: causal LM (``clm``), masked LM (``mlm``) or replaced-token
    detection (``rtd``, ELECTRA: masked positions filled by a small generator), or contrastive
    sentence embeddings (``simcse``: each sentence twice through the model, dropout as the
    noise; continue a checkpoint with ``init``). Images:
    ``simclr`` (two augmented views, NT-Xent) or ``mae`` (masked patches, pixel decoder; ViT only)."""

    name: str = "clm"  # an entry of headstart.objectives.registry: clm, mlm, rtd, simcse, simclr, mae
    mask_prob: float = 0.15  # mlm / rtd: share of tokens masked
    whole_word: bool = False  # mlm / rtd: mask every piece of a chosen word together
    generator_layers: int = 0  # rtd: the generator's depth; 0: a third of model.n_layer
    detection_weight: float = 50.0  # rtd: weight of the detection loss against the generator's
    temperature: float = 0.2  # simclr / simcse: NT-Xent temperature (SimCSE used 0.05)
    projection_hidden: int = 512  # simclr: the projection head's hidden and output widths
    projection_dim: int = 128  # simclr: the projection's output width
    chunk: int = 0  # simclr / simcse: > 0 computes the loss GradCache-style, this many examples per forward
    mask_ratio: float = 0.75  # mae: fraction of patches hidden from the encoder
    decoder_width: int = 64  # mae: the pixel decoder's width and depth
    decoder_depth: int = 2  # mae: the pixel decoder's blocks

    def problems(self) -> list[str]:
        return [
            *_in_range("objective.mask_prob", self.mask_prob, 0.0, 1.0),
            *_in_range("objective.mask_ratio", self.mask_ratio, 0.0, 1.0),
            *_positive("objective.temperature", self.temperature),
            *_at_least("objective.chunk", self.chunk, 0),
            *_at_least("objective.generator_layers", self.generator_layers, 0),
        ]


@dataclass
class OptimConfig:
    """AdamW, or Muon for the hidden matrices; weight decay applies to weight matrices only."""

    name: Literal["adamw", "muon"] = "adamw"  # muon: orthogonalised momentum for the blocks' matrices, AdamW else
    lr: float = 1e-3  # peak learning rate (the schedule scales it)
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's denominator floor
    weight_decay: float = 0.1  # decoupled, on weight matrices only
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0: no clipping
    momentum: float = 0.95  # muon: the hidden matrices' momentum (Nesterov)

    def problems(self) -> list[str]:
        return [
            *_at_least("optim.lr", self.lr, 0),
            *_in_range("optim.momentum", self.momentum, 0.0, 1.0, low_ok=True),
            *_in_range("optim.beta1", self.beta1, 0.0, 1.0, low_ok=True),
            *_in_range("optim.beta2", self.beta2, 0.0, 1.0, low_ok=True),
            *_at_least("optim.weight_decay", self.weight_decay, 0),
            *_at_least("optim.grad_clip", self.grad_clip, 0),
        ]


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then cosine or warmup-stable-decay (``wsd``)."""

    kind: Literal["cosine", "wsd", "constant"] = "cosine"  # cosine, warmup-stable-decay, or constant after warmup
    warmup_steps: int = 100  # linear warmup from 0
    min_lr_ratio: float = 0.1  # the final learning rate as a share of optim.lr
    decay_fraction: float = 0.2  # wsd: the final fraction of steps that decays to min_lr

    def problems(self) -> list[str]:
        return [
            *_at_least("schedule.warmup_steps", self.warmup_steps, 0),
            *_in_range("schedule.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, low_ok=True, high_ok=True),
            *_in_range("schedule.decay_fraction", self.decay_fraction, 0.0, 1.0, high_ok=True),
        ]


@dataclass
class VisionConfig:
    """An image backbone. ``resnet``: three stages of basic residual blocks, widths
    ``width``·(1, 2, 4), ``depth`` blocks per stage. ``vit``: ``patch``×``patch`` patches and
    ``depth`` transformer blocks ``width`` wide. Channels and image size come from the data."""

    kind: Literal["resnet", "vit"] = "resnet"  # resnet or vit
    channels: int = 0  # 0: from the data
    image_size: int = 0  # 0: from the data
    width: int = 32  # resnet: first stage's channels; vit: the token width
    depth: int = 2  # resnet: blocks per stage; vit: transformer blocks
    stem_stride: int = 1  # resnet: 2 halves the resolution at the stem (4× fewer FLOPs in every stage)
    patch: int = 4  # vit: patch side in pixels
    n_head: int = 4  # vit: attention heads
    pooling: Literal["avg", "max", "cls"] = "avg"  # cls: the ViT's class token


@dataclass
class AugmentConfig:
    """SimCLR-style views, scaled for small images: crop area, flip, jitter, blur."""

    crop_min: float = 0.3  # smallest crop, as a fraction of the image area
    flip: bool = True  # random horizontal flips
    jitter: float = 0.4  # brightness and contrast (and saturation for colour images); 0: off
    jitter_p: float = 0.8  # probability of the colour jitter
    blur_p: float = 0.5  # Gaussian blur probability; 0: off


@dataclass
class DataConfig:
    """What the run reads: prepared token shards (``headstart prepare``), or for images a
    dataset (IDX directory, .npz, image folder) whose train split is used without labels, and
    optionally a labelled one for the kNN and linear-probe evaluations."""

    shards: str = ""  # text: the directory `headstart prepare` wrote
    images: str = ""  # images: a dataset whose train split is read without labels
    eval_images: str = ""  # labelled: its train split fits the kNN / probe, its test split scores them
    eval_examples: int = 5000  # at most this many of each eval split (evaluation stays cheap)


@dataclass
class TrainConfig:
    """Loop settings: budget, batch, precision, evaluation and checkpoint cadence."""

    steps: int = 1000  # optimizer steps; the schedule spans them
    max_minutes: float = 0.0  # > 0: stop at this wall time (and checkpoint), whatever `steps` says
    batch_size: int = 16  # samples per micro-batch (the global batch under torchrun)
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 256  # tokens per training window
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where it measures faster
    device: str = "auto"  # auto: cuda when available, else cpu
    # torch.compile the model; auto: where measured to pay (one process pretraining a decoder 500+ steps)
    compile: Literal["auto", True, False] = "auto"
    seed: int = 1337  # seeds the initial weights, the data order and every random draw
    eval_every: int = 200  # steps between evaluations; 0: at the end only
    eval_batches: int = 20  # batches of validation windows per evaluation
    checkpoint_every: int = 500  # steps between checkpoints; 0: at the end only
    keep_checkpoints: int = 2  # newest checkpoints kept; 0: all
    log_every: int = 10  # steps per metrics line
    tensorboard: bool = True  # also write the metrics as TensorBoard event files, when tensorboard is installed
    threads: int = 0  # 0: torch's default
    # several processes (torchrun): ddp replicates the model, fsdp shards it (FSDP2), tp splits each
    # transformer block's matrices over train.tp ranks; auto: ddp under torchrun
    parallel: Literal["auto", "none", "ddp", "fsdp", "tp"] = "auto"
    # ranks that split one model copy under parallel=tp (0: all); fewer than the ranks: 2-D, FSDP2 across copies
    tp: int = 0
    # A step whose loss or gradient is NaN or inf is skipped (no update) and counted; this many in a row
    # stop the run with a message instead.
    max_bad_steps: int = 8
    # > 0: a step whose loss exceeds this many times the median of the last 32 taken steps' losses is
    # skipped as a spike too (0: off; fine-tuning losses near zero vary by orders of magnitude)
    spike_factor: float = 0.0

    def problems(self) -> list[str]:
        positive = ("steps", "batch_size", "grad_accum", "seq_len", "log_every", "max_bad_steps")
        return [
            *(problem for name in positive for problem in _at_least(f"train.{name}", getattr(self, name), 1)),
            *(problem for name in ("eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "threads",
                                   "tp")
              for problem in _at_least(f"train.{name}", getattr(self, name), 0)),
            *_at_least("train.max_minutes", self.max_minutes, 0),
            *_at_least("train.spike_factor", self.spike_factor, 0),
        ]  # fmt: skip


@dataclass
class EmbeddingsConfig:
    """How the token embeddings start. ``skipgram``: trained by skip-gram with negative sampling
    on the training shards before the main objective (a few CPU-minutes), so the objective
    starts from embeddings where similar tokens are already close; ``random``: N(0, init_std)."""

    init: Literal["random", "skipgram"] = "random"  # skipgram or random
    epochs: int = 3  # skip-gram passes over the train split
    window: int = 5  # skip-gram context: this many tokens either side
    negatives: int = 5  # negative samples per (centre, context) pair


@dataclass
class RunConfig:
    """Where the run directory goes."""

    out_dir: str = "runs"  # parent of the run directory
    name: str = ""  # the run directory's name; empty: derived from the objective and the data


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs; saved resolved in every checkpoint."""

    # a checkpoint to continue from: its weights and model settings (dropout: this run's); text keeps its
    # tokenizer, images their size and channels (the projection head carries over when it fits)
    init: str = ""
    # continuing: "fresh" starts a cold AdamW; "carry" starts from the checkpoint's optimizer moments
    init_optimizer: Literal["fresh", "carry"] = "fresh"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def problems(self) -> list[str]:
        found = []
        if self.init_optimizer == "carry" and not self.init:
            found.append("init_optimizer=carry: carries a checkpoint's optimizer; set init=CHECKPOINT")
        if self.data.shards and self.data.images:
            found.append("data.shards and data.images: a run reads one of them")
        return found


@dataclass
class TokenizerConfig:
    """Train a tokenizer (``kind``, ``vocab_size``) or reuse one (``path`` to a tokenizer.json)."""

    path: str = ""  # an existing tokenizer.json to reuse
    kind: Literal["bpe", "wordpiece", "unigram", "char"] = "bpe"  # the tokenizer to train
    vocab_size: int = 8192  # tokens in the trained vocabulary
    lowercase: bool = False  # WordPiece only
    # with path: add up to this many tokens for the corpus's most often split words, old ids unchanged
    # (continued pretraining on a new domain: `pretrain init=CHECKPOINT` grows the embedding to match)
    extend: int = 0


@dataclass
class PrepareConfig:
    """Raw data in, token shards out (``headstart prepare``)."""

    inputs: list[str] = field(default_factory=list)  # files, globs, directories, or hf:NAME
    val_inputs: list[str] = field(default_factory=list)  # optional: a separate validation source
    out: str = ""  # the shard directory to write
    text_mode: Literal["line", "block", "file"] = "line"  # a document per line / blank-line block / file
    jsonl_field: str = "text"  # JSONL field holding the text (or a list of words)
    parquet_column: str = "text"  # Parquet column holding the text
    hf_split: str = "train"  # hf:NAME inputs: the dataset split
    val_fraction: float = 0.05  # share of the data held out for validation
    val_mode: Literal["documents", "tail"] = "documents"  # hashed documents, or the last tokens
    invalid_utf8: Literal["skip", "fail"] = "skip"  # skip (and count) or fail on undecodable input
    workers: int = 0  # 0: one per CPU core
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class TaskConfig:
    """A labelled task: ``train`` is budgeted, ``eval`` is the reported set.

    ``classify``: a text and a label per record. ``tag``: a list of words and one tag per word
    (IOB2 entities; text_field/label_field name the lists, e.g. tokens/tags). ``translate``: a
    source and a target text (text_field/label_field, e.g. src/tgt) for a causal checkpoint.
    Those read JSONL. ``image``: labelled images (IDX directory, .npz, image folder) for an
    image checkpoint; ``train_split`` of ``train`` is budgeted, ``eval_split`` of ``eval``
    (default: the same dataset) is reported."""

    kind: Literal["classify", "tag", "translate", "image"] = "classify"  # what a record holds and how it is scored
    train: str = ""  # the labelled data the budget is drawn from
    eval: str = ""  # the reported set (never used to choose anything)
    train_split: str = "train"  # image
    eval_split: str = "test"  # image
    crop_min: float = 1.0  # image: random crops of at least this fraction of the area while training; 1: none
    flip: bool = False  # image: random horizontal flips while training
    text_field: str = "text"  # record field of the text (or the words, or the source)
    label_field: str = "label"  # record field of the label (or the tags, or the target)
    max_len: int = 128  # tokens per example (longer ones are cut, and counted)
    beam_size: int = 1  # translate: beam width for the reported score (greedy while training)


@dataclass
class FinetuneConfig:
    """One fine-tuning run: an init (checkpoint or ``scratch``), a task, a label budget, a seed."""

    init: str = "scratch"  # a checkpoint directory, or "scratch": random weights, same architecture
    architecture: str = ""  # for scratch: the checkpoint whose shape and tokenizer to copy
    task: TaskConfig = field(default_factory=TaskConfig)
    budget: int = 0  # labelled examples drawn (class-stratified) from task.train; 0: all
    val_fraction: float = 0.2  # of the budget, held out to pick the best step (early stopping)
    val_max: int = 2000  # at most this many held out (a large budget needs no more to choose well)
    pooling: Literal["mean", "cls", "last", "max"] = "mean"  # how a sequence becomes one vector for the head
    # How the cell reads the backbone out (an entry of headstart.readouts): finetune (the whole model,
    # early stopping on the held-out part of the budget); logistic (a probe on frozen pooled features);
    # knn (weighted kNN of the budget's frozen features); propagate (the budget's labels spread over a kNN
    # graph of the budget and the unlabelled training examples, then read by kNN); distill (self-training);
    # consistency (fine-tuning plus FixMatch / UDA consistency training on the unlabelled examples);
    # prompt (fine-tuning the LM head's label-word scores in a cloze pattern); setfit (contrastive
    # fine-tuning on pairs from the budget, then a logistic head)
    readout: str = "finetune"
    head_init: Literal["random", "probe"] = "random"  # probe: start the head from the fitted probe (LP-FT)
    layer_decay: float = 1.0  # layer-wise learning-rate decay: layer l gets lr·decay^(depth − l)
    # At least this many passes over the training split: a large budget gets proportionally more
    # steps (and evaluations as often in relative terms) than train.steps, which suits small ones.
    min_epochs: float = 0.0
    # readout=distill (SimCLRv2's self-training): the student, from the same init, trains this many steps
    # on the budget plus unlabelled training examples labelled by the teacher's class probabilities
    # (classification tasks; their own labels are never read).
    distill_steps: int = 800
    distill_rounds: int = 1  # readout=distill: > 1 makes each student the next round's teacher (noisy student)
    distill_noise: bool = False  # readout=distill: the student learns from strongly noised inputs (noisy student)
    # The teacher: the fine-tuned model, or label propagation on the init's frozen features.
    distill_teacher: Literal["finetuned", "propagate"] = "finetuned"
    consistency_threshold: float = 0.9  # readout=consistency: confidence a weak view's prediction needs to teach
    consistency_weight: float = 1.0  # readout=consistency: weight of the unlabelled loss against the budget's
    unlabelled_ratio: int = 3  # readout=consistency: unlabelled examples per labelled one in each batch
    consistency_noise: float = 0.2  # readout=consistency, text: share of tokens masked or replaced in the strong view
    # readout=prompt (PET / LM-BFF): each text becomes this cloze pattern, and the class scores are the
    # pretrained LM head's scores of one label word per class where the pattern ends (the next token for
    # a decoder, an appended mask token for an encoder)
    prompt_pattern: str = "{text} It was"
    # readout=prompt: one word per class, in the order of the task's labels as sorted; empty: the labels
    # themselves (when they are words). Each must be one token of the checkpoint's tokenizer.
    label_words: list[str] = field(default_factory=list)
    # readout=setfit (SetFit): contrastive pairs per budget example (one same-class, one other-class each)
    setfit_pairs: int = 20
    # Unlabelled training examples that self-training, consistency training and label propagation read
    # (drawn per seed);
    # 0: every training example outside the budget.
    unlabelled: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.01))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=20, min_lr_ratio=0.0))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=300, batch_size=32, eval_every=50, checkpoint_every=0, log_every=10)
    )
    run: RunConfig = field(default_factory=RunConfig)

    def problems(self) -> list[str]:
        return [
            *_at_least("budget", self.budget, 0),
            *_in_range("val_fraction", self.val_fraction, 0.0, 1.0),
            *_in_range("layer_decay", self.layer_decay, 0.0, 1.0, high_ok=True),
            *_at_least("distill_steps", self.distill_steps, 1),
            *_at_least("distill_rounds", self.distill_rounds, 1),
            *_at_least("unlabelled", self.unlabelled, 0),
            *_in_range("consistency_threshold", self.consistency_threshold, 0.0, 1.0, low_ok=True, high_ok=True),
            *_at_least("consistency_weight", self.consistency_weight, 0),
            *_at_least("unlabelled_ratio", self.unlabelled_ratio, 1),
            *_in_range("consistency_noise", self.consistency_noise, 0.0, 1.0, low_ok=True),
            *_at_least("setfit_pairs", self.setfit_pairs, 1),
            *(
                []
                if self.prompt_pattern.count("{text}") == 1
                else [f"prompt_pattern={self.prompt_pattern!r}: expected the placeholder {{text}} exactly once"]
            ),
            *_at_least("min_epochs", self.min_epochs, 0),
        ]


@dataclass
class CostConfig:
    """Prices that turn a study's labels and compute into money; 0: not given."""

    label: float = 0.0  # price of one labelled example
    cpu_hour: float = 0.0  # price of an hour of the CPU machine that pretrained and fine-tuned
    gpu_hour: float = 0.0  # price of an hour of a GPU (runs whose device was cuda)

    def problems(self) -> list[str]:
        return [*_at_least("cost.label", self.label, 0), *_at_least("cost.cpu_hour", self.cpu_hour, 0),
                *_at_least("cost.gpu_hour", self.gpu_hour, 0)]  # fmt: skip


@dataclass
class StudyConfig:
    """A transfer study: inits × label budgets × seeds on one task, every cell a normal fine-tune.

    Each init gets the same sweep (each candidate a list of fine-tune overrides); per cell the
    candidate with the best score on the validation split carved from the budget is kept.
    """

    finetune: str = "sst2"  # the fine-tuning recipe (name or YAML) every run starts from
    settings: list[str] = field(default_factory=list)  # overrides for every run, e.g. task.train=...
    # name → a checkpoint directory, "scratch" (the architecture from random init), or a
    # reference read out by logistic regression: "skipgram" (word vectors trained on
    # reference_text) or "ngrams" (bag of n-grams from the labels alone) for text
    # classification, "pixels" (raw pixel values) for images
    inits: dict[str, str] = field(default_factory=dict)
    # name → fine-tune overrides for that init's runs only, e.g. {simclr-knn: [readout=knn]}
    init_settings: dict[str, list[str]] = field(default_factory=dict)
    architecture: str = ""  # for scratch: default, the first checkpoint among the inits
    # the init that is plain supervised fine-tuning from scratch (e.g. {supervised: scratch} with
    # init_settings {supervised: [readout=finetune]}): the report's second label efficiency is against it
    supervised: str = ""
    budgets: list[int] = field(default_factory=lambda: [100, 500, 2000, 0])  # 0: all labels
    seeds: int = 5  # seeds per (init, budget) cell: 0, 1, ...
    # candidate name → fine-tune overrides; each cell keeps the best on its validation split
    sweep: dict[str, list[str]] = field(
        default_factory=lambda: {
            "probe": ["readout=logistic"],
            "lr1e-4": ["optim.lr=1e-4"],
            "lr3e-4": ["optim.lr=3e-4"],
        }
    )
    # candidate name → the largest label budget it runs at (a few-shot method such as readout=setfit is
    # not worth its cost with thousands of labels; with all labels, budget 0, it is left out too)
    sweep_max_budget: dict[str, int] = field(default_factory=dict)
    reference_text: list[str] = field(default_factory=list)  # unlabelled text for the skip-gram reference
    target: float = 0.0  # metric for steps-to-target; 0: what scratch reaches with the largest budget
    cost: CostConfig = field(default_factory=CostConfig)  # prices for the report's pay-off; none: labels and FLOPs
    run: RunConfig = field(default_factory=lambda: RunConfig(name="study"))

    def problems(self) -> list[str]:
        return [
            *(f"budgets: {budget} is negative; expected a label count (0: all labels)"
              for budget in self.budgets if budget < 0),
            *_at_least("seeds", self.seeds, 1),
            *(f"sweep_max_budget.{name}: not a candidate of the sweep ({', '.join(self.sweep)})"
              for name in self.sweep_max_budget if name not in self.sweep),
        ]  # fmt: skip


# ----------------------------------------------------------------------------- recipes


def recipe_names() -> list[str]:
    """The recipes shipped in ``headstart/recipes``."""
    folder = resources.files("headstart") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_yaml(path_or_recipe: str) -> dict[str, Any]:
    """Read a YAML file, or a shipped recipe by name."""
    path = Path(path_or_recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise HeadstartError(f"config {path_or_recipe}: no such file")
        text = path.read_text(encoding="utf-8")
    else:
        names = recipe_names()
        if path_or_recipe not in names:
            raise HeadstartError(
                f"recipe {path_or_recipe!r}: unknown; expected a YAML file or one of {', '.join(names)}"
                + _suggest(path_or_recipe, names)
            )
        text = (resources.files("headstart") / "recipes" / f"{path_or_recipe}.yaml").read_text("utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise HeadstartError(f"config {path_or_recipe}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise HeadstartError(f"config {path_or_recipe}: expected a mapping of sections at the top level")
    return data


def scalar(raw: str) -> Any:
    """An override's value read as YAML, or as the plain text when it is not YAML (a pattern
    like ``{text} It was``)."""
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["model.n_layer=6", "train.compile=true"]`` into a nested dict (values read by ``scalar``)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise HeadstartError(f"override {item!r}: expected section.field=value")
        value = scalar(raw)
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HeadstartError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking every key and value type."""
    if not isinstance(data, dict):
        raise HeadstartError(f"config {where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise HeadstartError(f"config key {path!r}: unknown" + _suggest(str(key), names, prefix=where))
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain nested dicts (for YAML)."""
    return dataclasses.asdict(config)


def load_config(cls: type[T], source: str | None, overrides: list[str] | dict[str, Any] | None = None) -> T:
    """Recipe or YAML file, then overrides, into a checked ``cls``: every key and type, then every
    value against its range and the other fields (``check``)."""
    data = load_yaml(source) if source else {}
    if overrides:
        data = merge(data, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return check(build(cls, data))


def check(config: T) -> T:
    """Every problem of ``config`` and of the sections in it (each config class's ``problems``),
    reported together in one error."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if hasattr(node, "problems"):
            found.extend(node.problems())
        for item in dataclasses.fields(node):
            value = getattr(node, item.name)
            if dataclasses.is_dataclass(value):
                walk(value)

    walk(config)
    if found:
        raise HeadstartError("; ".join(found))
    return config


def _at_least(name: str, value: float, low: float) -> list[str]:
    if value >= low:
        return []
    expected = "a positive integer" if low == 1 and isinstance(value, int) else f"at least {low:g}"
    return [f"{name}={value}: expected {expected}"]


def _positive(name: str, value: float) -> list[str]:
    return [] if value > 0 else [f"{name}={value}: expected a positive number"]


def _in_range(
    name: str, value: float, low: float, high: float, low_ok: bool = False, high_ok: bool = False
) -> list[str]:
    above = value >= low if low_ok else value > low
    below = value <= high if high_ok else value < high
    if above and below:
        return []
    return [f"{name}={value}: expected {low:g} {'≤' if low_ok else '<'} value {'≤' if high_ok else '<'} {high:g}"]


def save_yaml(config: Any, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _suggest(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    if not close:
        return ""
    return f"; did you mean {prefix + '.' if prefix else ''}{close[0]!r}?"


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value if value is not None else {}, path)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise HeadstartError(
                f"config {path}={value!r}: expected one of {', '.join(map(str, allowed))}"
                + _suggest(str(value), [str(a) for a in allowed])
            )
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            if arg is type(None) and value is None:
                return None
        non_none = [a for a in get_args(hint) if a is not type(None)]
        return _coerce(non_none[0], value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise HeadstartError(f"config {path}={value!r}: expected a mapping")
        key_hint, value_hint = get_args(hint) or (Any, Any)
        return {_coerce(key_hint, k, path): _coerce(value_hint, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        (item,) = get_args(hint) or (Any,)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise HeadstartError(f"config {path}={value!r}: expected true or false")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise HeadstartError(f"config {path}={value!r}: expected {getattr(hint, '__name__', hint)}")
