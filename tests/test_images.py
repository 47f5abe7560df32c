import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from headstart.data.images import read_images
from headstart.errors import HeadstartError


def write_idx(path, array, truncate=0):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = (header + array.astype(np.uint8).tobytes())[: -truncate or None]
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def idx_dataset(folder, n_images=5, n_labels=5, truncate=0):
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 4, 3), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", images, truncate)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_labels) % 3)
    return images


def test_idx_images_and_labels(tmp_path):
    images = idx_dataset(tmp_path / "idx")
    data = read_images(tmp_path / "idx", "train")
    assert data.images.shape == (5, 4, 3, 1) and data.images.dtype == np.uint8
    assert np.array_equal(data.images[..., 0], images)
    assert data.labels.tolist() == [0, 1, 2, 0, 1] and data.n_classes == 3


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: idx_dataset(d, truncate=7), "the header promises 60 bytes"),
        (lambda d: idx_dataset(d, n_labels=4), "5 images but 4 labels"),
        (lambda d: (d.mkdir(), (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03")), "bad magic"),
    ],
)
def test_bad_idx_files_are_named(tmp_path, setup, message):
    setup(tmp_path / "idx")
    with pytest.raises(HeadstartError, match=message):
        read_images(tmp_path / "idx", "train")


def test_npz_in_both_key_styles(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=np.arange(6, dtype=np.uint8))
    np.savez(tmp_path / "med.npz", test_images=x, test_labels=(np.arange(6) % 2).reshape(6, 1).astype(np.uint8))
    mnist, med = read_images(tmp_path / "mnist.npz", "train"), read_images(tmp_path / "med.npz", "test")
    assert mnist.images.shape == med.images.shape == (6, 5, 5, 1)
    assert mnist.labels.tolist() == list(range(6)) and med.labels.tolist() == [0, 1] * 3
    with pytest.raises(HeadstartError, match="no images for split 'val'"):
        read_images(tmp_path / "med.npz", "val")
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(5))
    with pytest.raises(HeadstartError, match="6 images but 5 labels"):
        read_images(tmp_path / "bad.npz", "train")


def test_image_folders_labelled_unlabelled_and_bad(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        (tmp_path / "labelled" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "labelled" / name / f"{i}.png")
    data = read_images(tmp_path / "labelled")
    assert data.images.shape == (4, 6, 8, 3) and data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1, 1]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(rng.integers(0, 256, (6, 8), dtype=np.uint8)).save(flat / "a.png")
    assert read_images(flat).labels is None and read_images(flat).images.shape == (1, 6, 8, 1)
    Image.fromarray(rng.integers(0, 256, (7, 8), dtype=np.uint8)).save(flat / "b.png")
    with pytest.raises(HeadstartError, match=r"b\.png: 8×7 pixels, but a\.png is 8×6"):
        read_images(flat)
    (flat / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(HeadstartError, match=r"b\.png: not a readable image"):
        read_images(flat)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "split", "count", "classes"),
    [
        ("vision/mnist/mnist.npz", "train", 60_000, 10),
        ("vision/fashion_mnist", "test", 10_000, 10),
        ("vision/medmnist/pneumoniamnist.npz", "train", 4_708, 2),
        ("vision/medmnist/breastmnist.npz", "val", 78, 2),
    ],
)
def test_shared_vision_datasets_load(shared_data, path, split, count, classes):
    data = read_images(shared_data / path, split)
    assert len(data) == count and data.images.shape[1:] == (28, 28, 1) and data.n_classes == classes
