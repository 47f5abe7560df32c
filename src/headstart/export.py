"""Hugging Face ``transformers`` interop: export a checkpoint as a directory that
``AutoModelForCausalLM`` / ``AutoModelForMaskedLM`` and ``AutoTokenizer`` load with no extra
arguments, and import such a directory back as a headstart checkpoint.

The mapping is exact, not approximate, so only the shapes both sides share go through:

* decoder → Llama (``LlamaForCausalLM``), or Qwen3 (``Qwen3ForCausalLM``: Llama's block with
  an RMSNorm on each head's queries and keys before RoPE) where ``model.qk_norm`` is on;
  encoder → EuroBERT (``EuroBertForMaskedLM``), which
  is Llama's block with bidirectional attention and a plain vocabulary projection. ModernBERT,
  the other RoPE encoder, normalises the embeddings, puts a dense + norm transform before its
  vocabulary projection and uses LayerNorm and GeGLU, none of which headstart's encoder has.
* Both: pre-norm RMSNorm (eps 1e-6), SwiGLU, no biases, one key/value head per query head,
  head_dim = n_embd / n_head, default RoPE with the checkpoint's theta, tied or untied output.
* Weights: ``qkv`` splits into q, k, v (its rows run head by head); the MLP's ``up`` into the gate and
  up (its rows alternate, unit by unit).
  headstart rotates channel pairs (2j, 2j+1), transformers' rotate-half pairs (j, j + d/2):
  each head's q and k rows are reordered to match, which leaves every attention score as it was
  (and so are QK-norm's gains, which act on the same channels).
* Refused with one line: Mamba, image checkpoints, GELU MLPs, LayerNorm and an encoder with
  QK-norm (no exact counterpart); on import, anything outside the mapping (grouped-query attention, biases,
  another activation or epsilon, scaled RoPE), named by its config.json field.

What is exported is the backbone fine-tuning starts from (ELECTRA: the discriminator, whose
vocabulary projection is its tied embedding, never trained as a masked LM), in float32.
The tokenizer keeps headstart's ``tokenizer.json``; a decoder's adds ``<|endoftext|>`` in
front, as ``headstart generate`` does, so ``model.generate(**tokenizer(prompt))`` continues a
prompt the same way (within the context: past it, headstart slides its window and transformers
does not). transformers reads a special token's text (``<mask>``) as that token;
headstart reads it as text. Import drops the tokenizer's post-processor (headstart places
its own document markers) and appends any of headstart's six special tokens it lacks, each
embedding row starting at the mean of its spelling's pieces.

Needs ``transformers`` ≥ 5 (imported lazily: an optional dependency).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from headstart.config import ModelConfig, ObjectiveConfig, PretrainConfig, RunConfig, to_dict
from headstart.data.extend_vocab import new_token_pieces
from headstart.data.tokenizers import (
    CLS,
    EOD,
    MASK,
    PAD,
    SEP,
    UNK,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_str,
    tokenizer_info,
)
from headstart.errors import HeadstartError
from headstart.files import atomic_path
from headstart.models import resolve
from headstart.models.transformer import RMS_NORM_EPS, Transformer, mlp_hidden
from headstart.train import checkpoint as ckpt
from headstart.train.checkpoint import open_checkpoint
from headstart.workflows.continued import grow_vocabulary

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Architecture:
    """The transformers architecture one kind of headstart transformer maps onto."""

    model_type: str
    auto_class: str
    causal: bool
    objective: str


DECODER = Architecture("llama", "AutoModelForCausalLM", True, "clm")
QK_NORM_DECODER = Architecture("qwen3", "AutoModelForCausalLM", True, "clm")
ENCODER = Architecture("eurobert", "AutoModelForMaskedLM", False, "mlm")
ARCHITECTURES = {a.model_type: a for a in (DECODER, QK_NORM_DECODER, ENCODER)}

# headstart's block weights that transformers holds under another name, unchanged
RENAMED = {
    "norm1.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "mlp.proj.weight": "mlp.down_proj.weight",
}


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise HeadstartError("Hugging Face interop needs transformers: pip install 'transformers>=5'") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise HeadstartError(f"Hugging Face interop needs transformers ≥ 5 (found {transformers.__version__})")
    return transformers


def _fresh(out: str | Path) -> Path:
    """``out`` as a directory to create: never written over, so nothing of the user's is lost."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HeadstartError(f"--out {out}: already exists and is not empty; give a new directory")
    return out


# ----------------------------------------------------------------------------- weights


def _rope_order(head_dim: int) -> torch.Tensor:
    """The order of a head's channels that turns headstart's pairs (2j, 2j+1) into rotate-half's (j, j + d/2)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _reorder_heads(weight: torch.Tensor, n_head: int, order: torch.Tensor) -> torch.Tensor:
    return weight.view(n_head, -1, weight.size(-1))[:, order].reshape(weight.shape)


def to_transformers(state: Weights, config: ModelConfig) -> Weights:
    """headstart backbone weights → Llama / EuroBERT names and layouts (the output projection
    included even when tied, as transformers' own state dict has it)."""
    order = _rope_order(config.n_embd // config.n_head)
    out = {
        "model.embed_tokens.weight": state["embed.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state.get("lm_head.weight", state["embed.weight"]),
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        qkv = state[ours + "attn.qkv.weight"]
        q, k, v = qkv.view(config.n_head, 3, -1, qkv.size(-1)).unbind(1)  # head by head (WEIGHT_LAYOUT)
        q, k, v = (t.reshape(-1, qkv.size(-1)) for t in (q, k, v))
        gate, up = state[ours + "mlp.up.weight"].unflatten(0, (-1, 2)).unbind(1)  # unit by unit
        out |= {theirs + name: state[ours + key] for key, name in RENAMED.items()}
        out |= {
            theirs + "self_attn.q_proj.weight": _reorder_heads(q, config.n_head, order),
            theirs + "self_attn.k_proj.weight": _reorder_heads(k, config.n_head, order),
            theirs + "self_attn.v_proj.weight": v,
            theirs + "mlp.gate_proj.weight": gate,
            theirs + "mlp.up_proj.weight": up,
        }
        if config.qk_norm:
            out |= {f"{theirs}self_attn.{x}_norm.weight": state[f"{ours}attn.{x}_norm.weight"][order] for x in "qk"}
    return out


def from_transformers(state: Weights, config: ModelConfig) -> Weights:
    """The inverse of :func:`to_transformers`."""
    inverse = torch.argsort(_rope_order(config.n_embd // config.n_head))
    out = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k = (_reorder_heads(state[f"{theirs}self_attn.{x}_proj.weight"], config.n_head, inverse) for x in "qk")
        out |= {ours + key: state[theirs + name] for key, name in RENAMED.items()}
        heads = [t.view(config.n_head, -1, t.size(-1)) for t in (q, k, state[theirs + "self_attn.v_proj.weight"])]
        out[ours + "attn.qkv.weight"] = torch.stack(heads, dim=1).flatten(0, 2)
        out[ours + "mlp.up.weight"] = torch.stack(
            [state[theirs + "mlp.gate_proj.weight"], state[theirs + "mlp.up_proj.weight"]], dim=1
        ).flatten(0, 1)
        if config.qk_norm:
            out |= {f"{ours}attn.{x}_norm.weight": state[f"{theirs}self_attn.{x}_norm.weight"][inverse] for x in "qk"}
    return out


# ----------------------------------------------------------------------------- export


def _check_exportable(config: PretrainConfig, folder: Path) -> None:
    model = config.model
    if config.data.images:
        raise HeadstartError(f"checkpoint {folder}: an image checkpoint; export --to hf takes text transformers")
    if model.kind != "transformer":
        raise HeadstartError(
            f"checkpoint {folder}: model.kind={model.kind}; export --to hf maps transformers (decoder → Llama, "
            "encoder → EuroBERT)"
        )
    if model.mlp != "swiglu":
        raise HeadstartError(
            f"checkpoint {folder}: model.mlp={model.mlp}; Llama and EuroBERT have SwiGLU MLPs only, so a "
            f"{model.mlp.upper()} transformer has no exact transformers counterpart"
        )
    if model.norm != "rmsnorm":
        raise HeadstartError(
            f"checkpoint {folder}: model.norm={model.norm}; Llama and EuroBERT use RMSNorm only, so this model "
            "has no exact transformers counterpart"
        )
    if model.qk_norm and not model.causal:
        raise HeadstartError(
            f"checkpoint {folder}: model.qk_norm=true in an encoder; EuroBERT does not normalise queries and keys, "
            "so this model has no exact transformers counterpart (a decoder with QK-norm exports as Qwen3)"
        )


def architecture_of(config: ModelConfig) -> Architecture:
    if not config.causal:
        return ENCODER
    return QK_NORM_DECODER if config.qk_norm else DECODER


def _hf_fields(config: ModelConfig, tokenizer_ids: dict[str, int]) -> dict[str, Any]:
    """The transformers config of a headstart transformer, every field that decides the math set explicitly."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": mlp_hidden(config),
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.n_embd // config.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": config.context,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "dtype": "float32",
        **tokenizer_ids,
    }


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out``: config.json, generation_config.json (decoders), model.safetensors,
    tokenizer.json and tokenizer_config.json. Written to a temporary sibling and renamed."""
    transformers = _transformers()
    target = _fresh(out)
    opened = open_checkpoint(checkpoint)
    _check_exportable(opened.config, opened.folder)
    backbone, tokenizer = opened.backbone, opened.tokenizer
    config = backbone.config
    arch = architecture_of(config)
    info = tokenizer_info(tokenizer)
    ids = {"bos_token_id": info.eod_id, "eos_token_id": info.eod_id, "pad_token_id": info.pad_id}
    if not arch.causal:
        ids["mask_token_id"] = info.mask_id
    hf_config = transformers.AutoConfig.for_model(arch.model_type, **_hf_fields(config, ids))
    hf_model = getattr(transformers, arch.auto_class).from_config(hf_config)
    hf_model.load_state_dict(to_transformers(backbone.state_dict(), config))
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOD,
        eos_token=EOD,
        pad_token=PAD,
        mask_token=MASK,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        add_bos_token=arch.causal,
        model_max_length=config.context,
    )
    with atomic_path(target, directory=True) as tmp:  # target is empty or absent (checked above)
        hf_model.save_pretrained(tmp)
        hf_tokenizer.save_pretrained(tmp)
    return target


# ----------------------------------------------------------------------------- import


def _model_config(hf: Any, arch: Architecture, where: Path) -> ModelConfig:
    """headstart's shape for a transformers config, or one line naming the field that has no counterpart."""
    heads, width = hf.num_attention_heads, hf.hidden_size
    needs = {
        "hidden_act": ("silu", "SwiGLU MLPs only"),
        "num_key_value_heads": (heads, "one key/value head per query head, no grouped-query attention"),
        "head_dim": (width // heads, "head_dim = hidden_size / num_attention_heads"),
        "attention_bias": (False, "no biases"),
        "mlp_bias": (False, "no biases"),
        "rms_norm_eps": (RMS_NORM_EPS, f"RMSNorm with eps {RMS_NORM_EPS}"),
        "use_sliding_window": (False, "full attention in every layer"),
    }
    for field, (value, why) in needs.items():
        given = getattr(hf, field, value)
        if given != value:
            raise HeadstartError(f"{where}: {field}={given}; headstart needs {field}={value} ({why})")
    rope = hf.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise HeadstartError(f"{where}: rope_parameters.rope_type={rope['rope_type']}; headstart has default RoPE only")
    return resolve(
        ModelConfig(
            causal=arch.causal,
            vocab_size=hf.vocab_size,
            n_layer=hf.num_hidden_layers,
            n_head=heads,
            n_embd=width,
            context=hf.max_position_embeddings,
            mlp_hidden=hf.intermediate_size,
            rope_theta=float(rope.get("rope_theta", ModelConfig.rope_theta)),
            tie_embeddings=bool(hf.tie_word_embeddings),
            init_std=hf.initializer_range,
            qk_norm=arch is QK_NORM_DECODER,
        )
    )


def _read_architecture(transformers: ModuleType, source: Path) -> tuple[Any, Architecture]:
    if not (source / "config.json").is_file():
        raise HeadstartError(f"{source}: expected a transformers model directory (with config.json)")
    if not any(source.glob("*.safetensors")):
        raise HeadstartError(f"{source}: no .safetensors weights (import reads safetensors only, never pickles)")
    if not (source / "tokenizer.json").is_file():
        raise HeadstartError(f"{source}: no tokenizer.json (import needs the fast tokenizer's file)")
    try:
        hf = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception as exc:  # transformers raises several types for a config it cannot read
        raise HeadstartError(f"{source / 'config.json'}: cannot be read ({exc.__class__.__name__})") from None
    if hf.model_type not in ARCHITECTURES:
        raise HeadstartError(
            f"{source / 'config.json'}: model_type={hf.model_type}; import reads llama or qwen3 (decoders) or "
            "eurobert (encoder)"
        )
    return hf, ARCHITECTURES[hf.model_type]


def _load_weights(transformers: ModuleType, source: Path, arch: Architecture) -> Weights:
    auto = getattr(transformers, arch.auto_class)
    try:
        model, loading = auto.from_pretrained(
            source, dtype=torch.float32, use_safetensors=True, local_files_only=True, output_loading_info=True
        )
    except Exception as exc:  # a corrupt or mismatched file: transformers raises several types
        raise HeadstartError(f"{source}: transformers cannot load its weights ({exc.__class__.__name__})") from None
    if loading["missing_keys"]:
        raise HeadstartError(f"{source}: weights missing from its safetensors: {sorted(loading['missing_keys'])[:3]}")
    return model.state_dict()


def import_hf(source: str | Path, out: str | Path) -> Path:
    """A transformers Llama, Qwen3 or EuroBERT directory → a checkpoint (``out/checkpoints/step_00000000``)
    that ``pretrain init=`` and ``finetune init=`` take; returns its directory."""
    transformers = _transformers()
    source, target = Path(source), _fresh(out)
    hf, arch = _read_architecture(transformers, source)
    model = _model_config(hf, arch, source / "config.json")
    tokenizer = load_tokenizer(source / "tokenizer.json")
    original = tokenizer_from_str((source / "tokenizer.json").read_text(encoding="utf-8"))
    if original.get_vocab_size() != model.vocab_size:
        raise HeadstartError(
            f"{source / 'config.json'}: vocab_size={model.vocab_size}, but tokenizer.json has "
            f"{original.get_vocab_size()} tokens; headstart needs one embedding row per token"
        )
    tokenizer.post_processor = None
    backbone = Transformer(model)
    backbone.load_state_dict(from_transformers(_load_weights(transformers, source, arch), model))
    if pieces := new_token_pieces(original, tokenizer):
        grow_vocabulary(backbone, pieces)
        model = replace(model, vocab_size=tokenizer.get_vocab_size())
    config = PretrainConfig(
        model=model, objective=ObjectiveConfig(name=arch.objective), run=RunConfig(name=target.name)
    )
    return ckpt.write_checkpoint(
        target / "checkpoints",
        0,
        backbone,  # what build_model(config) makes for clm and mlm
        {"step": 0},
        to_dict(config),
        write_extras=lambda folder: save_tokenizer(tokenizer, folder / "tokenizer.json"),
    )
