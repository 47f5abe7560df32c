"""Checkpoints as directories, written atomically and verified on load.

A checkpoint holds ``config.yaml`` (the resolved config), ``model.safetensors``,
``tokenizer.json``, ``state.pt`` (optimizer, step, data cursor, RNG; plain tensors and
numbers, loaded with ``weights_only=True``), ``metrics.jsonl``, ``compute.json`` (FLOPs
spent) and ``manifest.json`` (sha256 of every file, so a corrupted or truncated file is
named instead of silently loaded). It is written to a temporary sibling, flushed to disk
(every file and directory entry), renamed into place, and the rename flushed before older
checkpoints are pruned: a crash or a power loss leaves the previous checkpoint intact.

A run of several processes keeps its model and optimizer as shards in ``dcp/`` instead of the
optimizer in ``state.pt`` (``distributed.py``). torch.distributed.checkpoint stores the shards'
index as a pickle, which ``--resume`` reads: every file is checked against the manifest first,
so a corrupted checkpoint is refused, but resume only sharded checkpoints you trust. Every other
verb reads the consolidated ``model.safetensors`` and never unpickles anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file, save_model
from tokenizers import Tokenizer
from torch import nn

from headstart.config import PretrainConfig, build
from headstart.data.tokenizers import load_tokenizer
from headstart.errors import HeadstartError
from headstart.files import named
from headstart.models import backbone_of
from headstart.models.transformer import WEIGHT_LAYOUT, adopt_weight_layout
from headstart.objectives.registry import build_model

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp_step_"  # a checkpoint being written: .tmp_step_XXXXXXXX_PID
REQUIRED = ("config.yaml", "model.safetensors", "manifest.json")
LAYOUT = {"weight_layout": WEIGHT_LAYOUT}  # in model.safetensors' metadata (models.transformer)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    config: dict[str, Any],
    write_extras: Callable[[Path], None] | None = None,
    keep: int = 0,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically and prune all but the newest ``keep`` (0: keep all).
    ``weights``: the whole state dict gathered from a sharded ``model``, written in its place."""
    refuse_non_finite(weights if weights is not None else model.state_dict(), f"step {step}")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with disk_errors_named(tmp / "model.safetensors"):
            if weights is None:
                save_model(model, str(tmp / "model.safetensors"), metadata=LAYOUT)  # tied weights once
            else:
                save_gathered(weights, model, tmp / "model.safetensors")
        buffer = io.BytesIO()  # serialised in memory, so a full disk is an OSError naming the file
        torch.save(state, buffer)
        (tmp / "state.pt").write_bytes(buffer.getvalue())
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        if write_extras is not None:
            write_extras(tmp)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"sha256": files, "self": manifest_digest(files)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        sync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        sync_directory(root)  # the rename is durable before anything older goes
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise named(exc, final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def manifest_digest(files: dict[str, str]) -> str:
    """The manifest's checksum of itself, so a damaged manifest is named as such."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def refuse_non_finite(weights: dict[str, torch.Tensor], where: str) -> None:
    """A diverged run's weights are never written, and never loaded: name the first bad tensor."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise HeadstartError(
                f"{where}: {name} holds NaN or inf (the run had diverged); lower optim.lr or raise "
                "schedule.warmup_steps, and resume from an earlier checkpoint or start again"
            )


@contextlib.contextmanager
def disk_errors_named(path: Path) -> Iterator[None]:
    """safetensors reports a full or read-only disk as its own error: raise it as the OSError it is,
    naming ``path``, so the CLI says it in one line."""
    try:
        yield
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from None


def remove_stale_writes(root: Path) -> int:
    """Remove the half-written checkpoint folders that killed runs left in ``root``; call it only
    while holding the run's lock (no live writer then). Returns how many."""
    stale = [p for p in root.glob(f"{TMP_PREFIX}*") if p.is_dir()] if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


def sync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename, a new file) to disk; a no-op where directories
    cannot be opened (Windows)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sync_tree(root: Path) -> None:
    """Flush every file under ``root`` and every directory entry to disk, so a checkpoint renamed
    into place after it is whole after a power loss too."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        sync_directory(folder)


def save_gathered(weights: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """``weights`` gathered from a sharded ``model``, stored as ``save_model`` stores a model: a
    tied tensor once, under the first of its names, the others named in the metadata."""
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    metadata = dict(LAYOUT)
    for group in names.values():
        kept, *tied = sorted(group)
        for name in tied:
            metadata[name] = kept
            weights.pop(name, None)
    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, str(path), metadata=metadata)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "manifest.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run directory, or its ``checkpoints`` folder; return the newest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise HeadstartError(f"checkpoint {path}: no such file or directory")
    if (path / "manifest.json").is_file():
        return path
    for root in (path / "checkpoints", path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise HeadstartError(f"checkpoint {path}: expected a checkpoint directory (with manifest.json) or a run directory")


def verify(path: Path) -> None:
    """Check every file against the manifest; name the first one that differs."""
    for name in REQUIRED:
        if not (path / name).is_file():
            raise HeadstartError(f"checkpoint {path}: missing {name}; the checkpoint is incomplete")
    try:
        written = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        manifest = written["sha256"]
        damaged = not isinstance(manifest, dict) or ("self" in written and written["self"] != manifest_digest(manifest))
    except (ValueError, KeyError, TypeError, AttributeError):
        damaged = True
    if damaged:
        raise HeadstartError(f"checkpoint {path / 'manifest.json'}: damaged (it does not match its own checksum)")
    for name, digest in manifest.items():
        file = path / name
        if not file.is_file():
            raise HeadstartError(f"checkpoint {path}: missing {name}")
        if _sha256(file) != digest:
            raise HeadstartError(f"checkpoint {file}: corrupted or truncated (sha256 does not match the manifest)")


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise HeadstartError(f"checkpoint {path}: config.yaml is missing or not valid YAML") from None
    if not isinstance(data, dict):
        raise HeadstartError(f"checkpoint {path}: config.yaml is not a mapping")
    return data


def load_weights(path: Path, model: nn.Module, strict: bool = True) -> None:
    file = path / "model.safetensors"
    try:
        with safe_open(str(file), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise HeadstartError(f"checkpoint {file}: cannot be read ({exc})") from None
    expected = model.state_dict()
    for name, shape in shapes.items():
        if name in expected and tuple(expected[name].shape) != shape:
            raise HeadstartError(
                f"checkpoint {file}: {name} has shape {shape}, the model expects {tuple(expected[name].shape)}"
            )
    missing, unexpected = load_model(model, str(file), strict=False)
    if strict and (missing or unexpected):
        raise HeadstartError(
            f"checkpoint {file}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if earlier_layout(path):
        adopt_weight_layout(model)
    refuse_non_finite(model.state_dict(), f"checkpoint {file}")


def earlier_layout(path: Path) -> bool:
    """Whether checkpoint ``path`` stores its fused projections in the earlier weight layout."""
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return (handle.metadata() or {}).get("weight_layout") != WEIGHT_LAYOUT


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except Exception as exc:  # any unpickling failure means the file is not a state we wrote
        raise HeadstartError(f"checkpoint {path / 'state.pt'}: cannot be read ({exc.__class__.__name__})") from None


@dataclass
class Opened:
    """A pretraining checkpoint, opened: its directory, its resolved config, the network its run
    trained (weights loaded unless opened for its shape alone), and its tokenizer (None for an
    image checkpoint)."""

    folder: Path
    config: PretrainConfig
    model: nn.Module
    tokenizer: Tokenizer | None

    @property
    def backbone(self) -> nn.Module:
        return backbone_of(self.model)


def open_checkpoint(path: str | Path, weights: bool = True, dropout: float | None = None) -> Opened:
    """The one way a checkpoint is opened: resolved (a run directory means its newest), verified
    against its manifest, its config read, its model built (``dropout``: in place of the one it
    trained with) and, with ``weights``, loaded."""
    folder = resolve_checkpoint(path)
    verify(folder)
    config = build(PretrainConfig, read_config(folder), "checkpoint config")
    if dropout is not None:
        config = replace(config, model=replace(config.model, dropout=dropout))
    model = build_model(config)
    if weights:
        load_weights(folder, model)
    tokenizer = load_tokenizer(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else None
    return Opened(folder, config, model, tokenizer)


def load_pretrained(path: str | Path) -> tuple[nn.Module, PretrainConfig, Path]:
    """A checkpoint's model as trained, in eval mode, with its config and its directory."""
    opened = open_checkpoint(path)
    opened.model.eval()
    return opened.model, opened.config, opened.folder
