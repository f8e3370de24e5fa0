"""Finding, verifying, safely extracting and loading image data sets (NumPy arrays only).

:func:`load_cifar10` looks for CIFAR-10, in order,

1. in the data folder (the ``data_dir`` argument, else the environment variable ``ENF_DATA_DIR``),
   as a zip ``cifar10/*.zip`` of an image-folder tree, as an image-folder tree
   ``cifar10/{train,test}/<class>/*.jpg|png`` (or one folder deeper), or as the official python
   version ``cifar-10-batches-py/`` (directly in the data folder or under ``cifar10/``);
2. in the cache, from an earlier official download: ``cache_dir()/cifar10/cifar-10-batches-py``;
3. as the official download (``download=True``, needs internet): the archive :data:`CIFAR10_URL`
   (163 MiB), checked against its md5, safely extracted into the cache, then deleted.

The data folder is only ever read (it may be read-only): zips are extracted into
``cache_dir()/extracted`` (checked and bounded first, see :func:`safe_extract_zip`), and every
decoded split is cached as ``cache_dir()/cifar10/<source-key>-<split>.npz``, so the second call
is fast.

Image-folder sources are returned *interleaved* (image ``i`` has label ``i % 10``), so any prefix
is class-balanced; the official pickles keep their official (already shuffled) order.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from enf_lib._io import (
    CorruptDataError,
    DataNotFoundError,
    check_md5,
    digest,
    download_file,
    env_data_dir,
    file_stamp,
    not_found_message,
    read_npz,
    safe_extract_tar,
    safe_extract_zip,
    tree_stamp,
    write_npz,
)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
"""CIFAR-10 class names in the official label order (label ``k`` is ``CIFAR10_CLASSES[k]``)."""

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
"""The official CIFAR-10 python version (170,498,071 bytes), downloaded when no copy exists."""

CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
"""The md5 of :data:`CIFAR10_URL`'s archive, checked before it is extracted."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File suffixes (case-insensitive) that :func:`read_image_folder` reads."""

_SPLITS = ("train", "test")
_CIFAR10_SHAPE = (32, 32, 3)
_OFFICIAL_FOLDER = "cifar-10-batches-py"
_OFFICIAL_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_OFFICIAL_FILES = (*_OFFICIAL_BATCHES["train"], *_OFFICIAL_BATCHES["test"], "batches.meta",
                   "readme.html")
"""Every file of the official archive's ``cifar-10-batches-py/``: nothing else is extracted."""

_Arrays = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def data_dir() -> pathlib.Path | None:
    """The folder named by the environment variable ``ENF_DATA_DIR``, or ``None`` if unset.

    It may be read-only: nothing in this module ever writes into it.
    """
    return env_data_dir()


def cache_dir() -> pathlib.Path:
    """The cache folder, created if missing.

    ``ENF_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/enf_lib``, else ``~/.cache/enf_lib``.
    """
    if os.environ.get("ENF_CACHE_DIR"):
        path = pathlib.Path(os.environ["ENF_CACHE_DIR"]).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
        path = base / "enf_lib"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _sub_folders(path: pathlib.Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path``."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The image files in ``folder`` (not hidden, suffix in :data:`IMAGE_SUFFIXES`), sorted."""
    names = sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
    )
    return [folder / name for name in names]


def _interleave(per_class: Sequence[Sequence[pathlib.Path]]) -> list[tuple[pathlib.Path, int]]:
    """Round-robin over the classes: (file, label) pairs, each class in turn while it has files."""
    order: list[tuple[pathlib.Path, int]] = []
    for rank in range(max(len(files) for files in per_class)):
        order.extend(
            (files[rank], label) for label, files in enumerate(per_class) if rank < len(files)
        )
    return order


def _decode_rgb(path: pathlib.Path) -> np.ndarray:
    """Decode one image file to uint8 RGB ``(H, W, 3)``; :class:`CorruptDataError` if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptDataError(f"cannot read image {path}: {err}") from err


def read_image_folder(
    root: str | os.PathLike, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read an image-folder tree ``root/<class>/<image files>`` (``.png``, ``.jpg``, ``.jpeg``).

    Args:
      root: the folder holding one sub-folder per class.
      class_names: the classes (sub-folder names) in label order; default: the sorted sub-folder
        names. Hidden files and folders and files of other types are ignored.

    Returns:
      ``(images, labels, class_names)``: images uint8 ``(N, H, W, 3)`` (RGB; grayscale and
      palette images converted), labels int64 ``(N,)`` indexing ``class_names``. The order is
      interleaved: image ``i`` has label ``i % num_classes`` while every class still has images
      left (within a class, files in sorted name order), so any prefix is class-balanced.

    Raises:
      DataNotFoundError: ``root`` is not a folder.
      CorruptDataError: a class folder is missing or has no images, an image is unreadable, or
        the images do not all share one size (the message names the offending file).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist (or is not a folder)")
    classes = tuple(class_names) if class_names is not None else tuple(_sub_folders(root))
    if not classes:
        raise CorruptDataError(f"{root} has no class sub-folders; expected {root}/<class>/<images>")
    per_class = []
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            raise CorruptDataError(f"class folder {folder} is missing")
        files = _image_files(folder)
        if not files:
            suffixes = "/".join(IMAGE_SUFFIXES)
            raise CorruptDataError(f"class folder {folder} has no {suffixes} images")
        per_class.append(files)

    order = _interleave(per_class)
    paths = [path for path, _ in order]
    first = _decode_rgb(paths[0])
    images = np.empty((len(paths), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, path in enumerate(paths[1:], start=1):
        image = _decode_rgb(path)
        if image.shape != first.shape:
            raise CorruptDataError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} pixels but {paths[0]} is "
                f"{first.shape[1]}x{first.shape[0]}: all images in {root} must share one size"
            )
        images[i] = image
    labels = np.array([label for _, label in order], dtype=np.int64)
    return images, labels, classes


# --------------------------------------------------------------------------------------------
# CIFAR-10 readers for the three local formats
# --------------------------------------------------------------------------------------------


def _find_split_parent(base: pathlib.Path) -> pathlib.Path | None:
    """The folder holding ``train/`` and ``test/``: ``base`` itself or one of its sub-folders."""
    if all((base / split).is_dir() for split in _SPLITS):
        return base
    found = [
        base / name
        for name in _sub_folders(base)
        if all((base / name / split).is_dir() for split in _SPLITS)
    ]
    if len(found) > 1:
        raise CorruptDataError(
            f"{base} has several folders with train/ and test/ "
            f"({', '.join(p.name for p in found)}); keep only one CIFAR-10 copy there"
        )
    return found[0] if found else None


def _read_cifar10_folder(parent: pathlib.Path, split: str) -> _Arrays:
    """Read ``parent/<split>/<class>/*`` with exactly the 10 CIFAR-10 class folders, 32x32 RGB."""
    split_dir = parent / split
    found = _sub_folders(split_dir)
    if tuple(found) != CIFAR10_CLASSES:
        unexpected = sorted(set(found) - set(CIFAR10_CLASSES))
        missing = [c for c in CIFAR10_CLASSES if c not in found]
        raise CorruptDataError(
            f"{split_dir} must hold exactly the 10 CIFAR-10 class folders {CIFAR10_CLASSES}; "
            f"unexpected: {unexpected}, missing: {missing}"
        )
    images, labels, _ = read_image_folder(split_dir, CIFAR10_CLASSES)
    if images.shape[1:] != _CIFAR10_SHAPE:
        raise CorruptDataError(
            f"CIFAR-10 images must be 32x32 RGB, but the images in {split_dir} are "
            f"{images.shape[2]}x{images.shape[1]}"
        )
    return images, labels


def _numpy_core() -> str:
    return "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only NumPy arrays and plain containers (never runs other code)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        module = re.sub(r"^numpy\._?core", "numpy.core", module)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name} in a data pickle")
        return super().find_class(module.replace("numpy.core", _numpy_core(), 1), name)


def _read_official_batch(path: pathlib.Path) -> _Arrays:
    """One official CIFAR-10 pickle: images uint8 ``(N, 32, 32, 3)``, labels int64 ``(N,)``."""
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError as err:
        raise CorruptDataError(
            f"{path} is missing: {path.parent} must hold data_batch_1 ... data_batch_5 and "
            "test_batch (the official CIFAR-10 python version); download or copy it again"
        ) from err
    except (
        pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError,
        ValueError, OverflowError,
    ) as err:
        raise CorruptDataError(f"{path} is not an official CIFAR-10 pickle: {err}") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(
            f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),):
        raise CorruptDataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_official_batches(folder: pathlib.Path, split: str) -> _Arrays:
    """The official python version ``cifar-10-batches-py/`` of one split, in the official order."""
    batches = [_read_official_batch(folder / name) for name in _OFFICIAL_BATCHES[split]]
    images = np.ascontiguousarray(np.concatenate([b[0] for b in batches]))
    return images, np.concatenate([b[1] for b in batches])


def _official_folder(download: bool, looked: str) -> pathlib.Path:
    """The official ``cifar-10-batches-py/`` in the cache, downloaded first if missing.

    The archive :data:`CIFAR10_URL` is kept only if its md5 is :data:`CIFAR10_MD5`, then only
    its official files are extracted (:func:`enf_lib._io.safe_extract_tar`), and it is deleted.
    ``looked`` says where local copies were looked for (for the error message).
    """
    folder = cache_dir() / "cifar10" / _OFFICIAL_FOLDER
    if folder.is_dir():
        return folder
    if not download:
        raise DataNotFoundError(_not_found_message(f"{looked}; download=False"))
    archive = folder.with_name("cifar-10-python.tar.gz")
    try:
        download_file(CIFAR10_URL, archive, desc="downloading CIFAR-10",
                      check=lambda path, name: check_md5(path, name, CIFAR10_MD5))
    except OSError as err:
        reason = f"downloading {CIFAR10_URL} failed: {err}"
        raise DataNotFoundError(_not_found_message(reason)) from err
    try:
        return safe_extract_tar(archive, folder, _OFFICIAL_FOLDER, _OFFICIAL_FILES)
    finally:
        archive.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Finding a source, and the npz cache
# --------------------------------------------------------------------------------------------


def _not_found_message(reason: str) -> str:
    layouts = (
        "      cifar10/<name>.zip   (a zip of [<folder>/]{train,test}/<class>/<images>)\n"
        "      cifar10/[<folder>/]{train,test}/{airplane,...,truck}/*.png|jpg\n"
        "      [cifar10/]cifar-10-batches-py/   (the official python version)"
    )
    return not_found_message(
        "CIFAR-10", reason, layouts,
        f"call load_cifar10(download=True) with internet access (downloads {CIFAR10_URL}, "
        "163 MiB, into the cache).",
    )


def _local_cifar10_source(
    root: pathlib.Path, split: str
) -> tuple[str, Callable[[], _Arrays]] | None:
    """A CIFAR-10 copy in the data folder ``root``: ``(cache key, loader)``, or ``None``."""
    base = root / "cifar10"
    zips = sorted(base.glob("*.zip")) if base.is_dir() else []
    if zips:
        zip_path = zips[0]
        key = f"{zip_path.stem}-{digest(*file_stamp(zip_path))}"

        def load_zip() -> _Arrays:
            extracted = safe_extract_zip(zip_path, cache_dir() / "extracted" / key)
            parent = _find_split_parent(extracted)
            if parent is None:
                raise CorruptDataError(
                    f"{zip_path} holds no folder with train/ and test/ "
                    "(at the top or one level down)"
                )
            return _read_cifar10_folder(parent, split)

        return key, load_zip
    parent = _find_split_parent(base) if base.is_dir() else None
    if parent is not None:
        key = f"folder-{digest(str(parent.resolve()), tree_stamp(parent / split))}"
        return key, lambda: _read_cifar10_folder(parent, split)
    for batches in (root / _OFFICIAL_FOLDER, base / _OFFICIAL_FOLDER):
        if batches.is_dir():
            stamps = [file_stamp(p) for p in sorted(batches.iterdir()) if p.is_file()]
            key = f"batches-{digest(str(batches.resolve()), stamps)}"
            return key, lambda: _read_official_batches(batches, split)
    return None


def _is_cifar10_split(images: np.ndarray, labels: np.ndarray) -> bool:
    """Whether images are uint8 ``(N, 32, 32, 3)`` and labels int64 ``(N,)`` in ``0..9``, N > 0."""
    return (
        images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == _CIFAR10_SHAPE
        and labels.dtype == np.int64 and labels.shape == (len(images),) and len(images) > 0
        and labels.min() >= 0 and labels.max() < len(CIFAR10_CLASSES)
    )


def load_cifar10(
    split: str = "train",
    *,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 as images uint8 ``(N, 32, 32, 3)`` and labels int64 ``(N,)``.

    Labels index :data:`CIFAR10_CLASSES`. See the module docstring for where the data is looked
    for; the decoded split is cached in ``cache_dir()/cifar10``.

    Args:
      split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
      limit: return only the first ``limit`` images. Image-folder copies are interleaved by class,
        so the prefix is class-balanced; the official pickles keep their (shuffled) order.
      data_dir: the data folder to look in; default: ``ENF_DATA_DIR``. Never written to.
      download: if no local copy exists, download the official archive (md5-checked).

    Raises:
      ValueError: unknown ``split``, or ``limit`` not in ``1..N``.
      DataNotFoundError: no copy found (the message says how to get one).
      CorruptDataError: a copy was found but is broken or has unexpected contents.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; use 'train' or 'test'")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if data_dir is not None and not pathlib.Path(data_dir).is_dir():
        raise DataNotFoundError(_not_found_message(f"data_dir={str(data_dir)!r} is not a folder"))
    root = pathlib.Path(data_dir) if data_dir is not None else env_data_dir()

    source = _local_cifar10_source(root, split) if root is not None and root.is_dir() else None
    if source is None:
        looked = f"no copy in the data folder {str(root)!r}" if root else "ENF_DATA_DIR unset"
        source = "official", lambda: _read_official_batches(
            _official_folder(download, looked), split)

    key, load = source
    cache_path = cache_dir() / "cifar10" / f"{key}-{split}.npz"
    cached = read_npz(cache_path, ("images", "labels"))
    if cached is None or not _is_cifar10_split(*cached):
        cached = load()
        if not _is_cifar10_split(*cached):
            raise CorruptDataError(
                f"the CIFAR-10 {split} split from {key!r} has unexpected arrays: images "
                f"{cached[0].dtype} {cached[0].shape}, labels {cached[1].dtype} {cached[1].shape}"
            )
        write_npz(cache_path, images=cached[0], labels=cached[1])
    images, labels = cached

    if limit is not None:
        if limit > len(images):
            raise ValueError(f"limit={limit} exceeds the {len(images)} images of the {split} split")
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return images, labels

