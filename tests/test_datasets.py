"""Tests of enf_lib.datasets: finding, safely extracting and loading image data (offline)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enf_lib import _io, datasets
from enf_lib.datasets import (
    CIFAR10_CLASSES,
    CorruptDataError,
    DataNotFoundError,
    cache_dir,
    data_dir,
    load_cifar10,
    read_image_folder,
    safe_extract_zip,
)

SPLIT_CODE = {"train": 0, "test": 1}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty cache folder, no data folder and no working download URL."""
    monkeypatch.setenv("ENF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ENF_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "CIFAR10_URL", (tmp_path / "no-such.tar.gz").as_uri())


# ---------------------------------------------------------------------------------------------
# Helpers that build tiny data sets
# ---------------------------------------------------------------------------------------------


def _pixel(label: int, index: int, split: str) -> np.ndarray:
    """The colour of image ``index`` of class ``label`` in ``split``: uint8 (3,)."""
    return np.array([20 * label + 5, 10 * index + 5, 100 * SPLIT_CODE[split] + 50], np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_cifar_tree(
    root: Path,
    per_class: int = 3,
    size: int = 32,
    classes: Sequence[str] = CIFAR10_CLASSES,
    ext: str = ".png",
) -> Path:
    """root/{train,test}/<class>/NNNN<ext>, each image one uniform colour :func:`_pixel`."""
    for split in SPLIT_CODE:
        for label, name in enumerate(classes):
            for i in range(per_class):
                color = _pixel(label, i, split)
                _save(root / split / name / f"{i:04d}{ext}", np.full((size, size, 3), color))
    return root


def _expected_pixels(n: int, split: str) -> np.ndarray:
    """The colours of the first ``n`` images of a tree read in interleaved order: (n, 3)."""
    return np.stack([_pixel(j % 10, j // 10, split) for j in range(n)])


def _zip_tree(src: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip every folder and file under ``src`` with arcnames ``prefix + relative path``."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, prefix + path.relative_to(src).as_posix())
    return zip_path


def _zip_with_member(zip_path: Path, name: str, data: bytes = b"evil", attr: int | None = None) -> Path:
    """A zip with one harmless member and one member ``name`` (optionally with ``external_attr``)."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("good/ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if attr is not None:
            info.external_attr = attr
        zf.writestr(info, data)
    with zipfile.ZipFile(zip_path) as zf:
        assert name in zf.namelist()  # the unsafe name really is in the zip
    return zip_path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of everything under ``root``, to check that nothing was written there."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """``read_only(path)`` makes a tree read-only; permissions are restored after the test."""
    changed: list[tuple[Path, int]] = []

    def make(root: Path) -> None:
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            changed.append((path, mode))
            path.chmod(mode & ~0o222)

    yield make
    for path, mode in reversed(changed):
        path.chmod(mode)


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def test_cifar10_classes_in_official_order() -> None:
    assert CIFAR10_CLASSES == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )


def test_data_dir_reads_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data_dir() is None
    monkeypatch.setenv("ENF_DATA_DIR", str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    assert not (tmp_path / "data").exists()  # never created


def test_cache_dir_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    monkeypatch.delenv("ENF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "enf_lib" and cache_dir().is_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "enf_lib" and cache_dir().is_dir()


# ---------------------------------------------------------------------------------------------
# read_image_folder
# ---------------------------------------------------------------------------------------------


def test_read_image_folder_interleaves_sorted_files(tmp_path: Path) -> None:
    files = {"b": ["2.png", "10.png", "1.png"], "a": ["x.jpeg"], "c": ["z.PNG", "y.jpg"]}
    values = {}
    for cls, names in files.items():
        for k, name in enumerate(names):
            value = 10 * len(values) + 10
            values[(cls, name)] = value
            mode_l = cls == "b" and k == 0  # one grayscale image: converted to RGB
            array = np.full((8, 6), value, np.uint8) if mode_l else np.full((8, 6, 3), value, np.uint8)
            _save(tmp_path / cls / name, array)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    _save(tmp_path / "b" / ".hidden.png", np.zeros((3, 3, 3), np.uint8))  # hidden, other size

    images, labels, classes = read_image_folder(tmp_path)

    assert classes == ("a", "b", "c")
    assert images.dtype == np.uint8 and images.shape == (6, 8, 6, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 1, 2, 1]
    order = [("a", "x.jpeg"), ("b", "1.png"), ("c", "y.jpg"), ("b", "10.png"), ("c", "z.PNG"), ("b", "2.png")]
    expected = np.array([values[key] for key in order])
    np.testing.assert_allclose(images.reshape(6, -1).mean(axis=1), expected, atol=2)  # JPEG: lossy
    assert (images[5] == values[("b", "2.png")]).all()  # the grayscale PNG, exactly, in R, G and B


def test_read_image_folder_given_class_names(tmp_path: Path) -> None:
    for cls, count in (("a", 1), ("b", 1), ("c", 2)):
        for i in range(count):
            _save(tmp_path / cls / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    _, labels, classes = read_image_folder(tmp_path, ["c", "a"])
    assert classes == ("c", "a") and labels.tolist() == [0, 1, 0]
    with pytest.raises(CorruptDataError, match="zzz"):
        read_image_folder(tmp_path, ["a", "zzz"])


def test_read_image_folder_rejects_mixed_sizes(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "b" / "0.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(CorruptDataError, match=r"b[/\\]0\.png"):
        read_image_folder(tmp_path)


def test_read_image_folder_rejects_unreadable_image(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(CorruptDataError, match=r"1\.png"):
        read_image_folder(tmp_path)


def test_read_image_folder_rejects_empty_or_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError):
        read_image_folder(tmp_path / "missing")
    with pytest.raises(CorruptDataError, match="no class sub-folders"):
        read_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(CorruptDataError, match="no .* images"):
        read_image_folder(tmp_path)


# ---------------------------------------------------------------------------------------------
# safe_extract_zip
# ---------------------------------------------------------------------------------------------


def test_safe_extract_zip_extracts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _save(src / "top" / "img.png", np.zeros((2, 2, 3), np.uint8))
    (src / "top" / "sub").mkdir()
    (src / "top" / "sub" / "note.txt").write_text("hello")
    zip_path = _zip_tree(src, tmp_path / "a.zip")
    dest = tmp_path / "out" / "a"

    assert safe_extract_zip(zip_path, dest) == dest
    assert (dest / "top" / "sub" / "note.txt").read_text() == "hello"
    assert (dest / "top" / "img.png").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a"]  # no partial folder left

    (dest / "top" / "sub" / "note.txt").write_text("changed")
    monkeypatch.setattr(zipfile, "ZipFile", None)  # a completed dest is not even re-read
    assert safe_extract_zip(zip_path, dest) == dest
    assert (dest / "top" / "sub" / "note.txt").read_text() == "changed"


def test_safe_extract_zip_refuses_unmarked_dest(tmp_path: Path) -> None:
    zip_path = _zip_with_member(tmp_path / "a.zip", "x.txt")
    (tmp_path / "dest").mkdir()
    with pytest.raises(FileExistsError, match="not a completed extraction"):
        safe_extract_zip(zip_path, tmp_path / "dest")


def test_safe_extract_zip_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zip_path = _zip_with_member(tmp_path / "a.zip", "x.txt")

    def interrupted(src: io.BufferedIOBase, dst: io.BufferedIOBase, size: int, name: str) -> None:
        dst.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(_io, "_copy_bounded", interrupted)
    with pytest.raises(OSError, match="disk full"):
        safe_extract_zip(zip_path, tmp_path / "out" / "dest")
    assert list((tmp_path / "out").iterdir()) == []


def test_leftovers_of_a_killed_writer_are_removed_after_an_hour(tmp_path: Path) -> None:
    from enf_lib._io import write_npz

    zip_path = _zip_with_member(tmp_path / "a.zip", "x.txt")
    out = tmp_path / "out"
    old_dir, new_dir = out / ".dest.partial-old", out / ".dest.partial-new"
    old_tmp, new_tmp = out / ".c.npz.old.tmp", out / ".c.npz.new.tmp"
    for folder in (old_dir, new_dir):
        folder.mkdir(parents=True)
        (folder / "half.txt").write_text("half")
    for file in (old_tmp, new_tmp):
        file.write_bytes(b"x" * 100)
    two_hours_ago = os.path.getmtime(new_tmp) - 7200
    for entry in (old_dir, old_tmp):
        os.utime(entry, (two_hours_ago, two_hours_ago))
    safe_extract_zip(zip_path, out / "dest")
    write_npz(out / "c.npz", a=np.zeros(2))
    # The old ones go; the recent ones may belong to a writer still at work, and stay.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["dest", "c.npz", new_dir.name, new_tmp.name])


@pytest.mark.parametrize(
    "name",
    ["../evil.txt", "good/../../evil.txt", "..\\evil.txt", "ABSOLUTE", "C:/evil.txt", "c:evil.txt"],
)
def test_safe_extract_zip_rejects_escaping_members(tmp_path: Path, name: str) -> None:
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs_evil.txt")
    zip_path = _zip_with_member(tmp_path / "bad.zip", name)
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match="refusing to extract"):
        safe_extract_zip(zip_path, tmp_path / "out" / "dest")
    assert _snapshot(tmp_path) == before  # nothing written anywhere, dest included
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize("name", ["link", "good/link"])
def test_safe_extract_zip_rejects_symlinks(tmp_path: Path, name: str) -> None:
    zip_path = _zip_with_member(tmp_path / "bad.zip", name, b"/etc/passwd", attr=0o120777 << 16)
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match="symbolic link"):
        safe_extract_zip(zip_path, tmp_path / "dest")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated", "end_cut", "crc", "empty", "html"])
def test_safe_extract_zip_rejects_corrupt_zip(tmp_path: Path, damage: str) -> None:
    payload = bytes(range(256)) * 8
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/one.bin", payload)
        zf.writestr("a/two.bin", payload[::-1])
    data = bytearray(good.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "end_cut":
        data = data[:-10]
    elif damage == "crc":
        data[data.index(payload) + 100] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"<html>Rate limit exceeded</html>")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match="CRC" if damage == "crc" else "not a readable zip") as info:
        safe_extract_zip(bad, tmp_path / "dest")
    message = str(info.value)
    assert str(bad) in message and "delete it and run again" in message
    if damage != "crc":
        assert "truncated or not a zip file" in message
    assert _snapshot(tmp_path) == before


def _zeros_zip(zip_path: Path, sizes: Sequence[int], method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip of members ``m<i>.bin`` holding ``sizes[i]`` zero bytes."""
    with zipfile.ZipFile(zip_path, "w", method) as zf:
        for i, size in enumerate(sizes):
            zf.writestr(f"m{i}.bin", bytes(size))
    return zip_path


@pytest.mark.parametrize(
    "limit, sizes, match",
    [("MAX_MEMBER_BYTES", [100, 2000], "member 'm1.bin' would expand to 2,000 bytes"),
     ("MAX_ARCHIVE_BYTES", [900, 900, 900], "would expand to 2,700 bytes")],
)
def test_safe_extract_zip_refuses_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, sizes: list[int], match: str
) -> None:
    monkeypatch.setattr(_io, limit, 1000)
    zip_path = _zeros_zip(tmp_path / "big.zip", sizes, zipfile.ZIP_STORED)
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match=match) as info:
        safe_extract_zip(zip_path, tmp_path / "cache" / "dest")
    assert f"enf_lib._io.{limit}" in str(info.value)
    assert _snapshot(tmp_path) == before  # refused from the central directory: nothing written


@pytest.mark.parametrize("sizes", [[4 << 20], [512 << 10] * 8], ids=["one_member", "many_members"])
def test_safe_extract_zip_refuses_zip_bombs(tmp_path: Path, sizes: list[int]) -> None:
    """Zeros deflate about a thousand-fold: one big member, or many small ones (each exempt)."""
    zip_path = _zeros_zip(tmp_path / "bomb.zip", sizes)
    assert zip_path.stat().st_size * 100 < sum(sizes)
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match="zip bomb"):
        safe_extract_zip(zip_path, tmp_path / "cache" / "dest")
    assert _snapshot(tmp_path) == before


def test_safe_extract_zip_accepts_small_compressible_members(tmp_path: Path) -> None:
    zip_path = _zeros_zip(tmp_path / "ds_store.zip", [6148, 0])  # a .DS_Store is mostly zeros
    dest = safe_extract_zip(zip_path, tmp_path / "dest")
    assert (dest / "m0.bin").read_bytes() == bytes(6148)


def test_safe_extract_zip_refuses_duplicate_names(tmp_path: Path) -> None:
    zip_path = tmp_path / "dup.zip"
    with zipfile.ZipFile(zip_path, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a/x.txt", b"first")
        zf.writestr("a/x.txt", b"second")
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match="member 'a/x.txt' appears more than once"):
        safe_extract_zip(zip_path, tmp_path / "dest")
    assert _snapshot(tmp_path) == before


def test_safe_extract_zip_refuses_encrypted_members(tmp_path: Path) -> None:
    zip_path = _zip_with_member(tmp_path / "secret.zip", "secret.txt", b"hidden")
    data = bytearray(zip_path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local, central headers
        start = data.rindex(signature)  # the second member's
        data[start + flag_at] |= 0x1
    zip_path.write_bytes(bytes(data))
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.getinfo("secret.txt").flag_bits & 0x1
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptDataError, match="'secret.txt' is encrypted") as info:
        safe_extract_zip(zip_path, tmp_path / "dest")
    assert str(zip_path) in str(info.value) and "delete it and run again" in str(info.value)
    assert _snapshot(tmp_path) == before


def test_safe_extract_zip_never_writes_past_the_declared_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member whose data is longer than its header says is cut off at the declared size."""
    zip_path = _zip_with_member(tmp_path / "a.zip", "big.bin", b"x" * 100)
    real_open = zipfile.ZipFile.open

    def lying_open(self: zipfile.ZipFile, member: str | zipfile.ZipInfo, *args, **kwargs):
        if getattr(member, "filename", member) == "big.bin":
            return io.BytesIO(b"x" * 10_000)
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    with pytest.raises(CorruptDataError, match="'big.bin' holds more than the 100 bytes"):
        safe_extract_zip(zip_path, tmp_path / "out" / "dest")
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# load_cifar10 from image folders and zips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_load_cifar10_from_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nested: bool) -> None:
    data = tmp_path / "data"
    _make_cifar_tree(data / "cifar10" / "my-copy" if nested else data / "cifar10")
    monkeypatch.setenv("ENF_DATA_DIR", str(data))
    for split in SPLIT_CODE:
        images, labels = load_cifar10(split, download=False)
        assert images.dtype == np.uint8 and images.shape == (30, 32, 32, 3)
        assert labels.dtype == np.int64 and labels.tolist() == [j % 10 for j in range(30)]
        np.testing.assert_array_equal(images[:, 5, 7], _expected_pixels(30, split))

    images, labels = load_cifar10("test", limit=10, download=False)
    assert images.shape == (10, 32, 32, 3) and sorted(labels.tolist()) == list(range(10))
    np.testing.assert_array_equal(images[:, 0, 0], _expected_pixels(10, "test"))
    with pytest.raises(ValueError, match="limit=31 exceeds the 30 images"):
        load_cifar10("test", limit=31, download=False)


@pytest.mark.parametrize("prefix", ["", "cifar10-jpeg/"], ids=["top", "nested"])
def test_load_cifar10_from_zip_in_read_only_data_dir(tmp_path: Path, read_only, prefix: str) -> None:
    data = tmp_path / "data"
    _zip_tree(_make_cifar_tree(tmp_path / "src", ext=".jpg"), data / "cifar10" / "tiny.zip", prefix)
    read_only(data)
    before = _snapshot(data)

    for split in SPLIT_CODE:
        images, labels = load_cifar10(split, data_dir=data, download=False)
        assert images.dtype == np.uint8 and images.shape == (30, 32, 32, 3)
        assert labels.tolist() == [j % 10 for j in range(30)]
        np.testing.assert_allclose(images[:, 16, 16], _expected_pixels(30, split), atol=3)  # JPEG

    assert _snapshot(data) == before
    extracted = list((cache_dir() / "extracted").iterdir())
    assert len(extracted) == 1 and extracted[0].name.startswith("tiny-")
    assert sorted(p.name.split("-")[-1] for p in (cache_dir() / "cifar10").iterdir()) == [
        "test.npz", "train.npz",
    ]

    # The second call reads the npz cache: it needs neither the extracted folder nor the images.
    for path in sorted(extracted[0].rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    images2, labels2 = load_cifar10("test", data_dir=data, download=False)
    np.testing.assert_array_equal(images2, images)
    np.testing.assert_array_equal(labels2, labels)


@pytest.mark.parametrize("junk", ["garbage", "wrong_dtype", "missing_key"])
def test_load_cifar10_rebuilds_broken_cache(tmp_path: Path, junk: str) -> None:
    data = tmp_path / "data"
    _make_cifar_tree(data / "cifar10", per_class=1)
    images, labels = load_cifar10("test", data_dir=data, download=False)
    (npz,) = (cache_dir() / "cifar10").glob("*-test.npz")
    if junk == "garbage":
        npz.write_bytes(b"not an npz")
    elif junk == "wrong_dtype":
        np.savez(npz, images=images.astype(np.float32), labels=labels)
    else:
        np.savez(npz, images=images)
    images2, labels2 = load_cifar10("test", data_dir=data, download=False)
    np.testing.assert_array_equal(images2, images)
    np.testing.assert_array_equal(labels2, labels)
    with np.load(npz) as rebuilt:
        assert rebuilt["images"].dtype == np.uint8 and rebuilt["labels"].dtype == np.int64


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize(
    "problem, match",
    [("renamed_class", "lorry"), ("extra_class", "unicorn"), ("wrong_size", "32x32"), ("no_splits", "train")],
)
def test_load_cifar10_rejects_unexpected_contents(tmp_path: Path, as_zip: bool, problem: str, match: str) -> None:
    tree = tmp_path / "src" if as_zip else tmp_path / "data" / "cifar10"
    if problem == "renamed_class":
        _make_cifar_tree(tree, per_class=1, classes=[*CIFAR10_CLASSES[:-1], "lorry"])
    elif problem == "extra_class":
        _make_cifar_tree(tree, per_class=1, classes=[*CIFAR10_CLASSES, "unicorn"])
    elif problem == "wrong_size":
        _make_cifar_tree(tree, per_class=1, size=16)
    else:
        _save(tree / "images" / "airplane" / "0.png", np.zeros((32, 32, 3), np.uint8))
    if as_zip:
        _zip_tree(tree, tmp_path / "data" / "cifar10" / "copy.zip")
    elif problem == "no_splits":  # a folder without train/ and test/ is simply not a copy
        match = "not found"
    error = DataNotFoundError if match == "not found" else CorruptDataError
    with pytest.raises(error, match=match):
        load_cifar10("test", data_dir=tmp_path / "data", download=False)


def test_load_cifar10_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown CIFAR-10 split 'valid'"):
        load_cifar10("valid")
    for limit in (0, -3):
        with pytest.raises(ValueError, match="limit must be a positive"):
            load_cifar10("test", limit=limit)
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        load_cifar10("test", data_dir=tmp_path / "missing", download=False)


def test_load_cifar10_without_data_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataNotFoundError, match="ENF_DATA_DIR") as info:
        load_cifar10("test", download=False)
    assert isinstance(info.value, FileNotFoundError)
    assert "load_cifar10(download=True)" in str(info.value) and "torchvision" not in str(info.value)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ENF_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError, match="no copy in the data folder"):
        load_cifar10("train", download=False)


# ---------------------------------------------------------------------------------------------
# load_cifar10 from the official python version (pickles)
# ---------------------------------------------------------------------------------------------


def _write_official_batches(folder: Path, protocol: int, python2_names: bool) -> dict[str, tuple]:
    """A fake ``cifar-10-batches-py``: 5 train batches of 2 images, a test batch of 3.

    Returns the expected (images HWC, labels) per split. ``python2_names`` rewrites the NumPy
    module names to ``numpy.core...`` as in the official (Python 2) files.
    """
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    expected: dict[str, list] = {"train": [], "test": []}
    for name, n in [*[(f"data_batch_{i}", 2) for i in range(1, 6)], ("test_batch", 3)]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}
        raw = pickle.dumps(batch, protocol=protocol)
        if python2_names:
            raw = raw.replace(b"numpy._core.", b"numpy.core.")
        (folder / name).write_bytes(raw)
        expected["test" if name == "test_batch" else "train"].append((images, labels))
    return {
        split: (np.concatenate([i for i, _ in parts]), np.array(sum((l for _, l in parts), [])))
        for split, parts in expected.items()
    }


@pytest.mark.parametrize(
    "where, protocol, python2_names",
    [("", 2, True), ("cifar10/", 2, False), ("", 5, False)],
)
def test_load_cifar10_from_official_pickles(tmp_path: Path, where: str, protocol: int, python2_names: bool) -> None:
    data = tmp_path / "data"
    expected = _write_official_batches(data / where / "cifar-10-batches-py", protocol, python2_names)
    for split, n in (("train", 10), ("test", 3)):
        images, labels = load_cifar10(split, data_dir=data, download=False)
        assert images.dtype == np.uint8 and images.shape == (n, 32, 32, 3) and images.flags.c_contiguous
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, expected[split][0])  # CHW -> HWC, official order
        np.testing.assert_array_equal(labels, expected[split][1])


def test_official_pickle_known_pixel(tmp_path: Path) -> None:
    """Flat index c*1024 + row*32 + col of b'data' is channel c of pixel (row, col)."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    _write_official_batches(folder, protocol=2, python2_names=True)
    data = np.zeros((2, 3072), np.uint8)
    data[0, [0 * 1024 + 1 * 32 + 2, 1 * 1024 + 1 * 32 + 2, 2 * 1024 + 1 * 32 + 2]] = [200, 100, 50]
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [7, 3]}, protocol=2))
    images, labels = load_cifar10("test", data_dir=tmp_path / "data", download=False)
    assert images[0, 1, 2].tolist() == [200, 100, 50]
    assert images.sum() == 350 and labels.tolist() == [7, 3]


class _CodeRunner:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())  # harmless here, but a pickle may name any function


@pytest.mark.parametrize(
    "content, match",
    [
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _CodeRunner()}, "forbidden"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, "3072"),
        ({b"labels": [0]}, "not an official"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
    ],
)
def test_official_pickle_rejects_bad_content(tmp_path: Path, content: dict, match: str) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    _write_official_batches(folder, protocol=2, python2_names=False)
    (folder / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CorruptDataError, match=match):
        load_cifar10("test", data_dir=tmp_path / "data", download=False)


def test_official_pickles_missing_batch(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    _write_official_batches(folder, protocol=2, python2_names=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        load_cifar10("train", data_dir=tmp_path / "data", download=False)


def test_load_cifar10_from_earlier_official_download_in_cache() -> None:
    expected = _write_official_batches(cache_dir() / "cifar10" / "cifar-10-batches-py", 2, True)
    images, labels = load_cifar10("test", download=False)
    np.testing.assert_array_equal(images, expected["test"][0])
    np.testing.assert_array_equal(labels, expected["test"][1])


# ---------------------------------------------------------------------------------------------
# load_cifar10 downloading the official archive (from local file:// URLs)
# ---------------------------------------------------------------------------------------------


def _official_tar(
    tmp_path: Path, extra: Callable[[tarfile.TarFile], None] | None = None
) -> tuple[Path, dict[str, tuple]]:
    """A fake ``cifar-10-python.tar.gz`` with the official layout (:func:`_write_official_batches`,
    plus ``batches.meta`` and ``readme.html``), and its expected arrays per split; ``extra`` may
    add members."""
    folder = tmp_path / "fake" / "cifar-10-batches-py"
    expected = _write_official_batches(folder, protocol=2, python2_names=True)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": list(CIFAR10_CLASSES)}))
    (folder / "readme.html").write_text("<meta HTTP-EQUIV='REFRESH'>")
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        if extra is not None:
            extra(tar)
    return archive, expected


def _serve(monkeypatch: pytest.MonkeyPatch, archive: Path, md5: str | None = None) -> None:
    """Point the download at ``archive``, with its md5 (or ``md5``) as the expected one."""
    monkeypatch.setattr(datasets, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(datasets, "CIFAR10_MD5", md5 or hashlib.md5(archive.read_bytes()).hexdigest())


def _add_file(tar: tarfile.TarFile, name: str, data: bytes = b"evil", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def test_download_official_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, expected = _official_tar(tmp_path)
    _serve(monkeypatch, archive)
    images, labels = load_cifar10("train")
    assert images.dtype == np.uint8 and images.shape == (10, 32, 32, 3) and images.flags.c_contiguous
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected["train"][0])  # CHW -> HWC, official order
    np.testing.assert_array_equal(labels, expected["train"][1])
    folder = cache_dir() / "cifar10"
    assert sorted(p.name for p in (folder / "cifar-10-batches-py").iterdir()) == sorted(
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "readme.html"])
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py", "official-train.npz"]

    archive.unlink()  # the other split comes from the extracted folder, without a download
    images, labels = load_cifar10("test", limit=2)
    np.testing.assert_array_equal(images, expected["test"][0][:2])
    np.testing.assert_array_equal(labels, expected["test"][1][:2])


def test_download_refuses_a_corrupted_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, _ = _official_tar(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    _serve(monkeypatch, archive, md5)
    with pytest.raises(CorruptDataError, match=f"has md5 [0-9a-f]{{32}}, not the expected {md5}"):
        load_cifar10("test")
    assert list((cache_dir() / "cifar10").iterdir()) == []  # the download was not kept


@pytest.mark.parametrize(
    "member",
    ["cifar-10-batches-py/extra.txt", "../evil.txt", "cifar-10-batches-py/../../evil.txt",
     "/tmp/evil.txt", "test_batch", "link", "hardlink"],
)
def test_download_refuses_unexpected_tar_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    def add(tar: tarfile.TarFile) -> None:
        if member == "link":
            _add_file(tar, "cifar-10-batches-py/batches.meta", b"", type=tarfile.SYMTYPE,
                      linkname="/etc/passwd")
        elif member == "hardlink":
            _add_file(tar, "cifar-10-batches-py/readme.html", b"", type=tarfile.LNKTYPE,
                      linkname="/etc/passwd")
        else:
            _add_file(tar, member)

    archive, _ = _official_tar(tmp_path, add)
    _serve(monkeypatch, archive)
    with pytest.raises(CorruptDataError, match="refusing to extract .*: member .* is not one of"):
        load_cifar10("test")
    assert list((cache_dir() / "cifar10").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (cache_dir() / "evil.txt").exists()


def test_download_refuses_an_oversized_tar_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, _ = _official_tar(tmp_path)  # its batches hold 2 or 3 images: 6,000 to 10,000 bytes
    _serve(monkeypatch, archive)
    monkeypatch.setattr(_io, "MAX_MEMBER_BYTES", 5000)
    with pytest.raises(CorruptDataError, match="would expand to .* bytes, more than the 5,000"):
        load_cifar10("test")
    assert list((cache_dir() / "cifar10").iterdir()) == []


def test_safe_extract_tar_refuses_a_file_that_is_not_a_tar_gz(tmp_path: Path) -> None:
    for content in (b"<html>not found</html>", b""):
        bad = tmp_path / "bad.tar.gz"
        bad.write_bytes(content)
        with pytest.raises(CorruptDataError, match="is not a readable tar.gz"):
            _io.safe_extract_tar(bad, tmp_path / "dest", "cifar-10-batches-py", ["test_batch"])
    archive, _ = _official_tar(tmp_path)
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="is not a readable tar.gz"):
        _io.safe_extract_tar(tmp_path / "cut.tar.gz", tmp_path / "dest", "cifar-10-batches-py",
                             ["test_batch", *(f"data_batch_{i}" for i in range(1, 6)),
                              "batches.meta", "readme.html"])
    assert not (tmp_path / "dest").exists()


def test_download_failure_is_reported() -> None:
    with pytest.raises(DataNotFoundError, match="downloading .* failed") as info:
        load_cifar10("test")
    assert "load_cifar10(download=True)" in str(info.value)
    assert not list((cache_dir() / "cifar10").glob("*"))


def test_no_download_when_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, _ = _official_tar(tmp_path)
    _serve(monkeypatch, archive)
    with pytest.raises(DataNotFoundError, match="download=False"):
        load_cifar10("test", download=False)
    assert not (cache_dir() / "cifar10").exists()


# ---------------------------------------------------------------------------------------------
# The real local copy (skipped when absent)
# ---------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_cifar10_test_split(real_cifar10: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = real_cifar10
    monkeypatch.setenv("ENF_CACHE_DIR", str(cache))
    images, labels = load_cifar10("test", limit=200, data_dir=root, download=False)
    assert images.dtype == np.uint8 and images.shape == (200, 32, 32, 3)
    assert labels.dtype == np.int64 and labels[:10].tolist() == list(range(10))
    assert np.bincount(labels).tolist() == [20] * 10
    assert 80 < images.mean() < 180 and images.std() > 20


@pytest.mark.data
@pytest.mark.slow
def test_real_cifar10_train_split(real_cifar10: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = real_cifar10
    monkeypatch.setenv("ENF_CACHE_DIR", str(cache))
    images, labels = load_cifar10("train", data_dir=root, download=False)
    assert images.shape == (50000, 32, 32, 3) and np.bincount(labels).tolist() == [5000] * 10
    assert 80 < images.mean() < 180
