"""Image datasets as uint8 arrays: IDX files (MNIST / Fashion-MNIST, optionally gzipped), NumPy
``.npz`` archives (MNIST-style ``x_train``/``y_train`` or MedMNIST-style ``train_images``/
``train_labels``), and image folders (one subfolder per class, or a flat unlabelled folder).

Every reader returns the same :class:`ImageSet` — images (N, H, W, C) uint8 and labels where
known — so pretraining and fine-tuning never care where the pixels came from. A file that does
not hold what it claims is refused with one line naming it; nothing is silently dropped.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.errors import HeadstartError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IDX_NAMES = {"train": "train", "test": "t10k"}  # the split names inside MNIST-style IDX file names
IDX_DTYPES = {0x08: np.uint8}


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int64, or None for unlabelled images
    classes: list[str] = field(default_factory=list)  # names of the label ids, when known
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise HeadstartError(
                f"{self.source}: expected images as (N, height, width, channels) uint8, "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise HeadstartError(
                f"{self.source}: {len(self.images):,} images but {len(self.labels):,} labels; they must match"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_classes(self) -> int:
        if self.labels is None:
            return 0
        return max(len(self.classes), int(self.labels.max()) + 1 if len(self.labels) else 0)


def read_images(path: str | Path, split: str = "train") -> ImageSet:
    """The ``split`` (train / val / test) of the dataset at ``path``: an IDX directory or images
    file, an ``.npz`` archive, or an image folder."""
    path = Path(path)
    if not path.exists():
        raise HeadstartError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        return read_npz(path, split)
    if path.is_dir() and any(p.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for p in path.iterdir()):
        name = IDX_NAMES.get(split, split)
        images = [p for p in path.iterdir() if p.name.startswith(f"{name}-images-idx3-ubyte")]
        if not images:
            raise HeadstartError(f"{path}: no {name}-images-idx3-ubyte[.gz] file for split {split!r}")
        return read_idx_pair(images[0])
    if path.is_file() and "idx3-ubyte" in path.name:
        return read_idx_pair(path)
    if path.is_dir():
        return read_folder(path / split if (path / split).is_dir() else path)
    raise HeadstartError(f"{path}: expected an .npz archive, IDX files or a folder of images")


# ----------------------------------------------------------------------------- IDX


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (magic, dimensions, then the data), gzipped or not, checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise HeadstartError(f"{path}: unreadable ({exc.__class__.__name__}: {exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise HeadstartError(f"{path}: not an IDX file of uint8 (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise HeadstartError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise HeadstartError(
            f"{path}: the header promises {expected:,} bytes of data {shape}, the file holds {len(raw) - header:,}"
        )
    return np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=header).reshape(shape)


def read_idx_pair(images_path: Path) -> ImageSet:
    """An IDX images file and, when it is there, its labels file (``images-idx3`` → ``labels-idx1``)."""
    images = read_idx(images_path)
    if images.ndim != 3:
        raise HeadstartError(f"{images_path}: expected (N, height, width) images, got shape {images.shape}")
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    labels = None
    if labels_path.is_file():
        labels = read_idx(labels_path)
        if labels.ndim != 1:
            raise HeadstartError(f"{labels_path}: expected one label per image, got shape {labels.shape}")
        labels = labels.astype(np.int64)
    return ImageSet(images[..., None], labels, source=str(images_path))


# ----------------------------------------------------------------------------- npz


def read_npz(path: Path, split: str) -> ImageSet:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HeadstartError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        pairs = [(f"x_{split}", f"y_{split}"), (f"{split}_images", f"{split}_labels")]
        found = next(((x, y) for x, y in pairs if x in archive.files), None)
        if found is None:
            raise HeadstartError(
                f"{path}: no images for split {split!r}; expected a key x_{split} or {split}_images "
                f"(the archive has {', '.join(archive.files)})"
            )
        images = np.asarray(archive[found[0]])
        labels = np.asarray(archive[found[1]]) if found[1] in archive.files else None
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise HeadstartError(f"{path}: {found[0]} is {images.dtype}; expected uint8 pixels")
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores (N, 1)
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise HeadstartError(f"{path}: {found[1]} has shape {labels.shape}; expected one label per image")
        labels = labels.astype(np.int64)
    return ImageSet(images, labels, source=f"{path}[{found[0]}]")


# ----------------------------------------------------------------------------- folders


def read_folder(folder: Path) -> ImageSet:
    """Subfolders are classes (sorted names → label ids); image files directly in ``folder``
    with no class subfolders are unlabelled. All images must share one size."""
    from PIL import Image, UnidentifiedImageError

    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    if subfolders:
        classes = [p.name for p in subfolders]
        files = [(f, label) for label, sub in enumerate(subfolders) for f in sorted(sub.iterdir()) if is_image(f)]
    else:
        classes = []
        files = [(f, -1) for f in sorted(folder.iterdir()) if is_image(f)]
    if not files:
        raise HeadstartError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image.load()
                arrays.append(np.asarray(image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB")))
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise HeadstartError(f"{file}: not a readable image ({exc.__class__.__name__})") from None
    first = arrays[0].shape
    for (file, _), array in zip(files, arrays, strict=True):
        if array.shape != first:
            raise HeadstartError(
                f"{file}: {array.shape[1]}×{array.shape[0]} pixels, but {files[0][0].name} is "
                f"{first[1]}×{first[0]}; every image in a dataset must have the same size"
            )
    images = np.stack(arrays)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return ImageSet(images, labels, classes, source=str(folder))


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
