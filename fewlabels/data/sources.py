"""Dataset sources → :class:`Dataset` (train / test / optional val ImageSets plus normalisation).

``load_dataset(spec)`` takes a source name from :data:`SOURCES` or the path of an image folder:

- ``digits``: scikit-learn's 8×8 digits, embedded in the package, so it works offline. Upscaled to 16×16 so that
  crop/translate augmentation (a 2-pixel shift is not a quarter of the image) and 3-stage CNNs (16 → 8 → 4 → 2)
  make sense. Test = a stratified 20% split with seed 0 (deterministic).
- ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn``, ``stl10`` (labelled train + test) and
  ``stl10-unlabeled`` (train = the 5,000 labelled then the 100,000 unlabelled images, label -1): torchvision's
  files under ``root`` (default $FEWLABELS_DATA, else ~/.cache/fewlabels/datasets), downloaded when missing.
- a CSV/TSV manifest (``path,label[,split]`` rows; an empty label = unlabelled): see :mod:`fewlabels.data.manifest`.
- a folder: see :mod:`fewlabels.data.folder`. A single class tree ``DIR/<class>/*`` has no test split of its own:
  test = a stratified 20% of it (seed 0), train = the rest, and ``Dataset.info["test_split"]`` says so.

A name wins over a folder of the same name in the working directory; write ``./digits`` to mean the folder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewlabels.data.folder import channel_stats, list_folder, load_files, split_info, stratified_split
from fewlabels.data.imageset import ImageSet, check_memory
from fewlabels.data.manifest import is_manifest, read_manifest
from fewlabels.errors import FewLabelsError

DOWNLOAD_TIMEOUT_S = 30.0  # per network operation: an offline machine with a silent firewall fails in seconds


@dataclass
class Dataset:
    """A loaded source. Construct with Dataset(name, train, test, mean, std, val=..., info=...)."""

    name: str
    train: ImageSet
    test: ImageSet | None  # None when the source has no test split
    val: ImageSet | None = field(default=None, kw_only=True)  # an explicit validation split (image folder DIR/val)
    unlabelled: ImageSet | None = field(default=None, kw_only=True)  # the user's own unlabelled images (label -1)
    mean: tuple[float, ...]  # per channel, on [0, 1]: the published values, else computed from train
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict, kw_only=True)  # provenance: source, root, test split, cache

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def load_dataset(spec: str, *, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 bad_images: str = "stop", download: bool = True, image_size: int | None = None,
                 progress: bool = True, workers: int | None = None) -> Dataset:
    """Load a named source (see SOURCES) or an image folder.

    root: where torchvision sources live (default $FEWLABELS_DATA, else ~/.cache/fewlabels/datasets).
    cache_dir: decoded image folders (default $FEWLABELS_CACHE, else ~/.cache/fewlabels/cache).
    bad_images: "stop" raises on an unreadable image file, "skip" leaves it out with a warning.
    download: fetch a missing torchvision source. image_size: resize every image to this square size.
    workers: decoding processes for image folders (default: all usable cores).
    """
    spec = str(spec)
    name = spec.strip().lower().replace("_", "-")
    if image_size is not None and image_size < 1:
        raise FewLabelsError(f"image_size must be a positive number of pixels, got {image_size}.")
    if name in _LOADERS and not _looks_like_path(spec):
        train, test, info = _LOADERS[name](_data_root(root), download)
        dataset = _with_stats(name, train, test, info)
        return dataset if image_size is None else _resized(dataset, image_size)
    if is_manifest(spec) and not Path(spec).expanduser().is_dir():
        return _load_folder(Path(spec), cache_dir, bad_images, image_size, progress, workers, manifest=True)
    if Path(spec).expanduser().exists() or _looks_like_path(spec):
        return _load_folder(Path(spec), cache_dir, bad_images, image_size, progress, workers)
    raise FewLabelsError(f"{spec!r} is neither a dataset name ({', '.join(SOURCES)}) nor an existing folder. "
                         "Check the spelling or the path.")


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith(("~", "."))


def _data_root(root: str | Path | None) -> Path:
    if root is None:
        root = os.environ.get("FEWLABELS_DATA") or Path.home() / ".cache" / "fewlabels" / "datasets"
    return Path(root).expanduser()


# ---------------------------------------------------------------------------------------------------- statistics

# Published per-channel statistics of the training sets (population std over all pixels), as used by most papers.
_STANDARD_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}


def _with_stats(name: str, train: ImageSet, test: ImageSet | None, info: dict[str, Any]) -> Dataset:
    mean, std = _STANDARD_STATS.get(name) or channel_stats(train.images)
    info = {**info, "stats": "published" if name in _STANDARD_STATS else "computed from train"}
    return Dataset(name, train, test, mean, std, info=info)


# ---------------------------------------------------------------------------------------------------- digits


def _load_digits(root: Path, download: bool) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().mul(255 / 16).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16 → 0..255
    # Upscale before rounding so the only rounding error is the final one.
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8)  # (1797, 1, 16, 16)
    labels = torch.from_numpy(digits.target).long()
    everything = ImageSet(images, labels, [str(d) for d in range(10)])
    train_idx, test_idx = stratified_split(labels)
    info = {"source": "scikit-learn load_digits", "upscaled": "8x8 -> 16x16 bilinear",
            "test_split": split_info("digits")}
    return everything.subset(train_idx), everything.subset(test_idx), info


# ---------------------------------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _TorchvisionSource:
    dataset: str  # class name in torchvision.datasets
    folder: str  # the folder (under root) torchvision reads
    files: str  # what it expects there, for the "put the files here" message
    url: str
    train: dict[str, Any]
    test: dict[str, Any]
    layout: str  # of the .data array: "NHW", "NHWC" or "NCHW"
    classes: tuple[str, ...] | None = None  # None: the dataset's own .classes
    subroot: str = ""  # SVHN writes its files straight into its root: give it a folder of its own


_DIGIT_CLASSES = tuple(str(d) for d in range(10))
_MNIST_FILES = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                "t10k-labels-idx1-ubyte.gz")
_STL10_FILES = "stl10_binary.tar.gz (or its unpacked folder stl10_binary/)"
_TORCHVISION: dict[str, _TorchvisionSource] = {
    "cifar10": _TorchvisionSource(
        "CIFAR10", "", "cifar-10-python.tar.gz (or its unpacked folder cifar-10-batches-py/)",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", {"train": True}, {"train": False}, "NHWC"),
    "cifar100": _TorchvisionSource(
        "CIFAR100", "", "cifar-100-python.tar.gz (or its unpacked folder cifar-100-python/)",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", {"train": True}, {"train": False}, "NHWC"),
    "mnist": _TorchvisionSource(
        "MNIST", "MNIST/raw", _MNIST_FILES, "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {"train": True}, {"train": False}, "NHW", _DIGIT_CLASSES),
    "fashion-mnist": _TorchvisionSource(
        "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {"train": True}, {"train": False}, "NHW"),
    "svhn": _TorchvisionSource(
        "SVHN", "svhn", "train_32x32.mat and test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/",
        {"split": "train"}, {"split": "test"}, "NCHW", _DIGIT_CLASSES, subroot="svhn"),
    "stl10": _TorchvisionSource(
        "STL10", "", _STL10_FILES, "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        {"split": "train"}, {"split": "test"}, "NCHW"),
    "stl10-unlabeled": _TorchvisionSource(
        "STL10", "", _STL10_FILES, "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        {"split": "train+unlabeled"}, {"split": "test"}, "NCHW"),
}


def _load_torchvision(name: str, root: Path, download: bool) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    source = _TORCHVISION[name]
    train = _to_imageset(_open_torchvision(name, source, root, source.train, download), source)
    test = _to_imageset(_open_torchvision(name, source, root, source.test, download), source)
    return train, test, {"source": f"torchvision.datasets.{source.dataset}", "root": str(root / source.subroot)}


def _open_torchvision(name: str, source: _TorchvisionSource, root: Path, split: dict[str, Any],
                      download: bool) -> Any:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, source.dataset)
    tv_root = str(root / source.subroot)
    try:
        return cls(tv_root, download=False, **split)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        pass
    except (OSError, EOFError, ValueError) as err:
        raise FewLabelsError(f"The {name} files under {root / source.folder} could not be read ({err}). Delete "
                             "them and load again to download a fresh copy.") from None
    if not download:
        raise FewLabelsError(f"{name} is not in {root / source.folder}. Load it with download=True (--download) to "
                             f"fetch it, or put {source.files} there yourself and load with download=True (files "
                             "already there are used, not fetched again); or pass an image folder instead.")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return cls(tv_root, download=True, **split)
    except (OSError, RuntimeError, EOFError, tarfile.TarError) as err:  # URLError and socket timeouts are OSErrors
        reason = " ".join(str(err).split())  # torchvision's MNIST error spans lines, one per mirror
        raise FewLabelsError(
            f"Could not download {name} ({type(err).__name__}: {reason}). If this machine is offline, fetch "
            f"{source.url} elsewhere and put {source.files} in {root / source.folder}, then load again; or pass "
            "an image folder (DIR/train/<class>/*.png) instead.") from None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision opens URLs without a timeout: a dropped connection would hang forever without this."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _to_imageset(ds: Any, source: _TorchvisionSource) -> ImageSet:
    """The dataset's whole .data array as uint8 (N, C, H, W), without going through PIL image by image."""
    images = torch.as_tensor(np.asarray(ds.data))
    if source.layout == "NHW":
        images = images.unsqueeze(1)
    elif source.layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    labels = ds.targets if hasattr(ds, "targets") else ds.labels
    classes = list(source.classes or ds.classes)
    return ImageSet(images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long), classes)


# ---------------------------------------------------------------------------------------------------- folders


def _load_folder(path: Path, cache_dir: str | Path | None, bad_images: str, image_size: int | None,
                 progress: bool, workers: int | None, manifest: bool = False) -> Dataset:
    files = read_manifest(path) if manifest else list_folder(path, bad_images)
    data = load_files(files, cache_dir=cache_dir, bad_images=bad_images, image_size=image_size, progress=progress,
                      workers=workers)
    splits = data.splits
    name = Path(files.manifest).stem if files.manifest else Path(data.info["root"]).name
    return Dataset(name, splits["train"], splits.get("test"), data.mean, data.std, val=splits.get("val"),
                   unlabelled=splits.get("unlabelled"), info={**data.info, "stats": "computed from train"})


# ---------------------------------------------------------------------------------------------------- resizing


def _resized(dataset: Dataset, size: int) -> Dataset:
    """A built-in source at size × size (bilinear, antialiased when shrinking); mean/std stay those of the
    original images, which resizing barely changes."""
    def resize(images: ImageSet | None) -> ImageSet | None:
        if images is None or images.images.shape[-2:] == (size, size):
            return images
        check_memory((len(images), images.images.shape[1], size, size), f"--image-size {size}")
        out = torch.cat([F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False).round().clamp(0, 255).to(torch.uint8)
                         for chunk in images.images.split(1024)])
        return ImageSet(out, images.labels, images.classes, images.paths)

    info = {**dataset.info, "resized_to": size}
    return Dataset(dataset.name, resize(dataset.train), resize(dataset.test), dataset.mean, dataset.std,
                   val=resize(dataset.val), info=info)


_LOADERS: dict[str, Callable[[Path, bool], tuple[ImageSet, ImageSet, dict[str, Any]]]] = {
    "digits": _load_digits,
    **{name: (lambda root, download, name=name: _load_torchvision(name, root, download)) for name in _TORCHVISION},
}
SOURCES: tuple[str, ...] = tuple(_LOADERS)
