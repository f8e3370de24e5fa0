"""Finding, verifying, safely extracting and loading image data sets (NumPy arrays only).

:func:`load_cifar10` looks for CIFAR-10, in order,

1. in the data folder (the ``data_dir`` argument, else the environment variable ``ENF_DATA_DIR``),
   as a zip ``cifar10/*.zip`` of an image-folder tree, as an image-folder tree
   ``cifar10/{train,test}/<class>/*.jpg|png`` (or one folder deeper), or as the official python
   version ``cifar-10-batches-py/`` (directly in the data folder or under ``cifar10/``);
2. in the cache, from an earlier official download: ``cache_dir()/cifar10/cifar-10-batches-py``;
3. as the official download via the optional ``torchvision`` (``download=True``, needs internet).

The data folder is only ever read (it may be read-only): zips are extracted into
``cache_dir()/extracted``, and every decoded split is cached as
``cache_dir()/cifar10/<source-key>-<split>.npz``, so the second call is fast.

Image-folder sources are returned *interleaved* (image ``i`` has label ``i % 10``), so any prefix
is class-balanced; the official pickles keep their official (already shuffled) order.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from enf_lib._io import remove_stale, write_npz

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
"""CIFAR-10 class names in the official label order (label ``k`` is ``CIFAR10_CLASSES[k]``)."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File suffixes (case-insensitive) that :func:`read_image_folder` reads."""

_EXTRACTED_MARKER = ".enf_extract_complete"
_SPLITS = ("train", "test")
_CIFAR10_SHAPE = (32, 32, 3)
_OFFICIAL_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

_Arrays = tuple[np.ndarray, np.ndarray]


class DataNotFoundError(FileNotFoundError):
    """A data set is nowhere to be found; the message says how to get it."""


class CorruptDataError(ValueError):
    """Data found but unusable: broken zip, CRC failure, unexpected contents or a bad image."""


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def _data_dir_from_env() -> pathlib.Path | None:
    value = os.environ.get("ENF_DATA_DIR", "")
    return pathlib.Path(value).expanduser() if value else None


def data_dir() -> pathlib.Path | None:
    """The folder named by the environment variable ``ENF_DATA_DIR``, or ``None`` if unset.

    It may be read-only: nothing in this module ever writes into it.
    """
    return _data_dir_from_env()


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


def _digest(*parts: object) -> str:
    """A short, stable hex digest of ``parts`` (for cache keys)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Safe zip extraction
# --------------------------------------------------------------------------------------------


def _check_zip_member(info: zipfile.ZipInfo, root: pathlib.Path, zip_path: pathlib.Path) -> None:
    """Raise :class:`CorruptDataError` unless ``info`` is a plain file or folder inside ``root``."""
    name = info.filename
    problem = None
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        problem = "has an absolute path or a drive letter"
    elif ".." in re.split(r"[\\/]", name):
        problem = "has a '..' path component"
    elif os.path.commonpath([root, os.path.normpath(root / name)]) != str(root):
        problem = "resolves outside the destination"
    elif stat.S_ISLNK(info.external_attr >> 16):
        problem = "is a symbolic link"
    elif pathlib.PurePosixPath(name).name == _EXTRACTED_MARKER:
        problem = f"uses the reserved name {_EXTRACTED_MARKER}"
    if problem:
        raise CorruptDataError(
            f"refusing to extract {zip_path}: member {name!r} {problem}. "
            "Only use zips from a trusted source; re-create the zip with relative paths."
        )


def safe_extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> pathlib.Path:
    """Extract the zip ``zip_path`` into the folder ``dest`` safely, and return ``dest``.

    Before anything is written, the whole zip is checked: members with absolute paths, drive
    letters, ``..`` components or paths resolving outside ``dest``, symbolic links, and zips that
    are not zips or fail their CRC checks (:meth:`zipfile.ZipFile.testzip`) raise
    :class:`CorruptDataError`. The members are extracted into a temporary sibling folder that is
    renamed to ``dest`` when complete (with a marker file inside), so an interrupted extraction
    never leaves a half-filled ``dest``; such temporary folders left by a killed process are
    removed after an hour (:func:`enf_lib._io.remove_stale`). A completed ``dest`` is returned
    as is.

    Raises:
      CorruptDataError: the zip is broken or has an unsafe member.
      FileExistsError: ``dest`` exists but is not a completed extraction by this function.
    """
    zip_path, dest = pathlib.Path(zip_path), pathlib.Path(dest)
    if (dest / _EXTRACTED_MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(
            f"{dest} exists but is not a completed extraction (no {_EXTRACTED_MARKER} inside); "
            "remove it or choose another destination."
        )
    root = dest.resolve()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                _check_zip_member(info, root, zip_path)
            bad_member = zf.testzip()
            if bad_member is not None:
                raise CorruptDataError(
                    f"{zip_path} is corrupt: member {bad_member!r} fails its CRC check. "
                    "Download or copy the zip again."
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(dest.parent, f".{dest.name}.partial-")
            partial = pathlib.Path(
                tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent)
            )
            try:
                zf.extractall(partial)
                (partial / _EXTRACTED_MARKER).touch()
                partial.chmod(0o755)  # mkdtemp makes it private; the extracted data is not
                os.rename(partial, dest)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                if (dest / _EXTRACTED_MARKER).is_file():  # another process finished first
                    return dest
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise CorruptDataError(
            f"{zip_path} is not a readable zip ({err}). Download or copy the zip again."
        ) from err
    return dest


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


def _download_official(split: str, download: bool, looked: str) -> _Arrays:
    """The official CIFAR-10 via ``torchvision`` (downloads into the cache; verifies md5 sums).

    ``looked`` says where local copies were looked for (for the error message).
    """
    if not download:
        raise DataNotFoundError(_not_found_message(f"{looked}; download=False"))
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as err:
        raise DataNotFoundError(
            _not_found_message(f"{looked}; torchvision, needed to download, is not installed")
        ) from err
    root = cache_dir() / "cifar10"
    try:
        ds = CIFAR10(root=root, train=(split == "train"), download=True)
    except (OSError, RuntimeError) as err:
        reason = f"the download into {root} failed: {err}"
        raise DataNotFoundError(_not_found_message(reason)) from err
    return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Finding a source, and the npz cache
# --------------------------------------------------------------------------------------------


def _not_found_message(reason: str) -> str:
    return (
        f"CIFAR-10 not found ({reason}). Either\n"
        "  * set the environment variable ENF_DATA_DIR (or pass data_dir=) to a folder holding a "
        "CIFAR-10 copy in one of these layouts:\n"
        "      cifar10/<name>.zip   (a zip of [<folder>/]{train,test}/<class>/<images>)\n"
        "      cifar10/[<folder>/]{train,test}/{airplane,...,truck}/*.png|jpg\n"
        "      [cifar10/]cifar-10-batches-py/   (the official python version)\n"
        '  * or pip install "enf_lib[torchvision]" and call load_cifar10(download=True) with '
        "internet access."
    )


def _file_stamp(path: pathlib.Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _tree_stamp(folder: pathlib.Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file under ``folder``, sorted, for cache keys."""
    stamps = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            stamps.append((path, st.st_size, st.st_mtime_ns))
    return sorted(stamps)


def _local_cifar10_source(
    root: pathlib.Path, split: str
) -> tuple[str, Callable[[], _Arrays]] | None:
    """A CIFAR-10 copy in the data folder ``root``: ``(cache key, loader)``, or ``None``."""
    base = root / "cifar10"
    zips = sorted(base.glob("*.zip")) if base.is_dir() else []
    if zips:
        zip_path = zips[0]
        key = f"{zip_path.stem}-{_digest(*_file_stamp(zip_path))}"

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
        key = f"folder-{_digest(str(parent.resolve()), _tree_stamp(parent / split))}"
        return key, lambda: _read_cifar10_folder(parent, split)
    for batches in (root / "cifar-10-batches-py", base / "cifar-10-batches-py"):
        if batches.is_dir():
            stamps = [_file_stamp(p) for p in sorted(batches.iterdir()) if p.is_file()]
            key = f"batches-{_digest(str(batches.resolve()), stamps)}"
            return key, lambda: _read_official_batches(batches, split)
    return None


def _read_cache(path: pathlib.Path) -> _Arrays | None:
    """The arrays in a cached npz, or ``None`` if it is missing or not a valid CIFAR-10 split."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return (images, labels) if _is_cifar10_split(images, labels) else None


def _is_cifar10_split(images: np.ndarray, labels: np.ndarray) -> bool:
    """Whether images are uint8 ``(N, 32, 32, 3)`` and labels int64 ``(N,)`` in ``0..9``, N > 0."""
    return (
        images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == _CIFAR10_SHAPE
        and labels.dtype == np.int64 and labels.shape == (len(images),) and len(images) > 0
        and labels.min() >= 0 and labels.max() < len(CIFAR10_CLASSES)
    )


def _write_cache(path: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write ``images`` and ``labels`` to the npz ``path`` atomically."""
    write_npz(path, images=images, labels=labels)


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
      download: if no local copy exists, download the official data with ``torchvision``.

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
    root = pathlib.Path(data_dir) if data_dir is not None else _data_dir_from_env()

    source = _local_cifar10_source(root, split) if root is not None and root.is_dir() else None
    if source is None:
        official = cache_dir() / "cifar10" / "cifar-10-batches-py"
        if official.is_dir():
            source = "official", lambda: _read_official_batches(official, split)
        else:
            looked = f"no copy in the data folder {str(root)!r}" if root else "ENF_DATA_DIR unset"
            source = "official", lambda: _download_official(split, download, looked)

    key, load = source
    cache_path = cache_dir() / "cifar10" / f"{key}-{split}.npz"
    cached = _read_cache(cache_path)
    if cached is None:
        cached = load()
        if not _is_cifar10_split(*cached):
            raise CorruptDataError(
                f"the CIFAR-10 {split} split from {key!r} has unexpected arrays: images "
                f"{cached[0].dtype} {cached[0].shape}, labels {cached[1].dtype} {cached[1].shape}"
            )
        _write_cache(cache_path, *cached)
    images, labels = cached

    if limit is not None:
        if limit > len(images):
            raise ValueError(f"limit={limit} exceeds the {len(images)} images of the {split} split")
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return images, labels

