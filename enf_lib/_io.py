"""The file handling the data loaders share: atomic writes, cache keys, downloads and bounded,
safe archive extraction.

Every write goes to a uniquely named temporary file or folder next to its target and is renamed
over the target when complete, so that an interrupted write or two writers at once never leave a
half-written file under the real name. Archives are checked before anything is written
(:func:`safe_extract_zip`, :func:`safe_extract_tar`) and their members copied with counted reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

from enf_lib.progress import progress


class DataNotFoundError(FileNotFoundError):
    """A data set is nowhere to be found; the message says how to get it."""


class CorruptDataError(ValueError):
    """Data found but unusable: broken archive, CRC failure, unexpected contents or a bad image."""


STALE_AFTER_S = 3600.0
"""Temporary files and folders left this long unmodified are an interrupted write's (a hard kill
skips every cleanup), and the next write to the same target removes them."""

# Bounds on what an archive may expand to, checked from its headers before anything is written
# and again while copying. The real archives are far below them: the full OMBRIA repository zip
# expands to 199 MB (5,073 files of at most 0.3 MB), the official CIFAR-10 tar.gz (170 MB) to
# 186 MB (six batches of 31 MB), the CIFAR-10 JPEG zip to 55 MB (60,000 files of about 1 KB);
# their PNGs, JPEGs and pickles hardly compress (ratio about 1.1; text files under 10).
MAX_ARCHIVE_BYTES = 1 << 30
"""Most bytes (1 GiB) all members of an archive may expand to together."""
MAX_MEMBER_BYTES = 256 << 20
"""Most bytes (256 MiB) one archive member may expand to."""
MAX_RATIO = 100
"""Most an archive, or one of its members, may expand relative to its compressed size; a zip
bomb expands about a thousand-fold."""
RATIO_FREE_BYTES = 1 << 20
"""Members (and archives) expanding to at most this (1 MiB) are exempt from :data:`MAX_RATIO`:
small files of zeros, such as a ``.DS_Store``, compress far better than data, and are harmless."""

_EXTRACTED_MARKER = ".enf_extract_complete"
"""The file :func:`safe_extract_zip` puts in a completed extraction."""

_ADVICE = ("If it is a download, delete it and run again to download it again; if it is a copy "
           "of your own, check it or copy it again.")
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Atomic writes, and the npz caches
# --------------------------------------------------------------------------------------------


def remove_stale(folder: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Delete the entries of ``folder`` named ``prefix*suffix`` that were last modified more
    than :data:`STALE_AFTER_S` ago (files or folders); returns what was removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    cutoff = time.time() - STALE_AFTER_S
    for entry in folder.glob(f"{prefix}*{suffix}"):
        with contextlib.suppress(FileNotFoundError):        # another process removed it
            if entry.lstat().st_mtime < cutoff:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def _atomic(
    path: str | os.PathLike, mode: str, check: Callable[[Path], None] | None = None
) -> Iterator[IO]:
    """A temporary file renamed to ``path`` once written (and, if given, ``check``-ed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.", ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as file:
            yield file
        if check is not None:
            check(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _atomic_folder(dest: Path) -> Iterator[Path]:
    """A fresh temporary folder next to ``dest``, renamed to ``dest`` when the block completes
    and removed if it fails. If another process completed ``dest`` meanwhile, ours is dropped.
    Such folders left by a killed process are removed after :data:`STALE_AFTER_S`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest.parent, f".{dest.name}.partial-")
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield partial
        partial.chmod(0o755)  # mkdtemp makes it private; the extracted data is not
        try:
            os.rename(partial, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(partial, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save ``arrays`` as the ``.npz`` file ``path``, atomically."""
    with _atomic(path, "wb") as file:
        np.savez(file, **arrays)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    with _atomic(path, "w") as file:
        file.write(text)


def read_npz(path: Path, keys: Collection[str]) -> tuple[np.ndarray, ...] | None:
    """The arrays ``keys`` of the npz ``path``, or ``None`` if it is missing, unreadable or
    lacks one of them (a cache to rebuild)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return tuple(npz[key] for key in keys)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


# --------------------------------------------------------------------------------------------
# Finding data: the data folder, cache keys, the not-found message
# --------------------------------------------------------------------------------------------


def env_data_dir() -> Path | None:
    """The folder named by the environment variable ``ENF_DATA_DIR``, or ``None`` if unset."""
    value = os.environ.get("ENF_DATA_DIR", "")
    return Path(value).expanduser() if value else None


def digest(*parts: object) -> str:
    """A short, stable hex digest of ``parts`` (for cache keys)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime) of ``path``, for cache keys."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def tree_stamp(folder: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file under ``folder``, sorted, for cache keys."""
    stamps = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            stamps.append((path, st.st_size, st.st_mtime_ns))
    return sorted(stamps)


def not_found_message(dataset: str, reason: str, layouts: str, download: str) -> str:
    """What to do when ``dataset`` is missing: the data folder ``layouts`` (indented lines),
    else the ``download`` sentence."""
    return (
        f"{dataset} not found ({reason}). Either\n"
        "  * set the environment variable ENF_DATA_DIR (or pass data_dir=) to a folder holding "
        f"one of\n{layouts}\n"
        f"  * or {download}"
    )


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def download_file(url: str, dest: Path, *, desc: str, check: Callable[[Path, str], None]) -> Path:
    """Download ``url`` to ``dest``, streamed in 1 MiB chunks with a progress bar.

    The bytes go to a temporary file first; only a complete file that passes ``check(path,
    name)`` (which raises :class:`CorruptDataError`, naming the download ``name``) is renamed to
    ``dest``. Nothing is held in memory, and nothing is left behind by a failure.

    Raises:
      OSError: the download failed (offline, HTTP error: :class:`urllib.error.URLError`).
      CorruptDataError: the download is truncated or fails ``check``.
    """
    name = f"the download of {url}"
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
        with _atomic(dest, "wb", check=lambda path: check(path, name)) as file:
            received = 0
            with progress(total=total, desc=desc, unit="B", unit_scale=True) as bar:
                while chunk := response.read(_CHUNK):
                    file.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise CorruptDataError(f"{name} is truncated: {received:,} of {total:,} bytes. "
                                       "Run again to retry.")
    return dest


def check_md5(path: Path, name: str, expected: str) -> None:
    """Raise :class:`CorruptDataError` unless the md5 of ``path`` is ``expected``."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            md5.update(chunk)
    if md5.hexdigest() != expected:
        raise CorruptDataError(f"{name} has md5 {md5.hexdigest()}, not the expected {expected}: "
                               "it is damaged or not the expected file. Run again to retry.")


# --------------------------------------------------------------------------------------------
# Bounded, safe archive extraction
# --------------------------------------------------------------------------------------------


def _corrupt(name: str, problem: str) -> CorruptDataError:
    return CorruptDataError(f"{name} {problem}. {_ADVICE}")


def _check_size(name: str, size: int, limit: int, limit_name: str) -> None:
    if size > limit:
        raise _corrupt(name, f"would expand to {size:,} bytes, more than the {limit:,} allowed "
                             f"(enf_lib._io.{limit_name})")


def _check_ratio(name: str, size: int, compressed: int) -> None:
    if size > RATIO_FREE_BYTES and size > MAX_RATIO * compressed:
        raise _corrupt(name, f"would expand {size / max(compressed, 1):,.0f}-fold, more than the "
                             f"{MAX_RATIO}-fold real data can (a zip bomb?)")


def _copy_bounded(src: IO[bytes], dst: IO[bytes], size: int, name: str) -> None:
    """Copy the ``size`` bytes of ``src`` to ``dst`` with counted reads: a source holding more
    (its header lies) is refused without writing past ``size``, as is one holding fewer."""
    left = size
    while chunk := src.read(min(_CHUNK, left + 1)):
        if len(chunk) > left:
            raise _corrupt(name, f"holds more than the {size:,} bytes its header says")
        dst.write(chunk)
        left -= len(chunk)
    if left:
        raise _corrupt(name, f"holds {size - left:,} bytes, not the {size:,} its header says")


def _check_zip_member(info: zipfile.ZipInfo, root: Path, zip_path: Path) -> None:
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
    elif PurePosixPath(name).name == _EXTRACTED_MARKER:
        problem = f"uses the reserved name {_EXTRACTED_MARKER}"
    if problem:
        raise CorruptDataError(
            f"refusing to extract {zip_path}: member {name!r} {problem}. "
            "Only use zips from a trusted source; re-create the zip with relative paths."
        )


def _open_zip(path: Path, name: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise _corrupt(name, f"is not a readable zip ({err}): it is truncated or not a zip "
                             "file") from err


def _zip_members(zf: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """The members of ``zf``, checked from its central directory (nothing is decompressed):
    unique names, none encrypted, sizes and compression ratios within the bounds."""
    infos, seen = zf.infolist(), set()
    for info in infos:
        member = f"{name}: member {info.filename!r}"
        if info.filename.rstrip("/") in seen:
            raise _corrupt(member, "appears more than once")
        seen.add(info.filename.rstrip("/"))
        if info.flag_bits & 0x1:
            raise _corrupt(member, "is encrypted, and only unencrypted zips can be read")
        _check_size(member, info.file_size, MAX_MEMBER_BYTES, "MAX_MEMBER_BYTES")
        _check_ratio(member, info.file_size, info.compress_size)
    total = sum(info.file_size for info in infos)
    _check_size(name, total, MAX_ARCHIVE_BYTES, "MAX_ARCHIVE_BYTES")
    _check_ratio(name, total, sum(info.compress_size for info in infos))
    return infos


def _copy_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dst: IO[bytes], name: str
) -> None:
    """Decompress ``info`` into ``dst``, bounded by its declared size and checking its CRC."""
    member = f"{name}: member {info.filename!r}"
    try:
        with zf.open(info) as src:
            _copy_bounded(src, dst, info.file_size, member)
    except _ZIP_ERRORS as err:
        raise _corrupt(member, f"is damaged ({err})") from err


def check_zip(path: Path, name: str) -> None:
    """Raise :class:`CorruptDataError` unless ``path`` (called ``name`` in messages) is a zip
    within the bounds whose every member decompresses and passes its CRC check."""
    with _open_zip(path, name) as zf, open(os.devnull, "wb") as sink:
        for info in _zip_members(zf, name):
            _copy_zip_member(zf, info, sink, name)


def safe_extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract the zip ``zip_path`` into the folder ``dest`` safely, and return ``dest``.

    Before anything is written, the zip's central directory is checked: members with absolute
    paths, drive letters, ``..`` components or paths resolving outside ``dest``, symbolic links,
    duplicate names, encrypted members, members or a whole that would expand beyond
    :data:`MAX_MEMBER_BYTES` / :data:`MAX_ARCHIVE_BYTES` or more than :data:`MAX_RATIO`-fold,
    and files that are not zips or are truncated raise :class:`CorruptDataError`. Members are
    then copied with counted reads (never past their declared size) and CRC-checked, into a
    temporary folder renamed to ``dest`` when complete (with a marker file inside), so a failed
    or interrupted extraction leaves nothing (:func:`_atomic_folder`). A completed ``dest`` is
    returned as is.

    Raises:
      CorruptDataError: the zip is broken, too large, or has an unsafe member.
      FileExistsError: ``dest`` exists but is not a completed extraction by this function.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if (dest / _EXTRACTED_MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(
            f"{dest} exists but is not a completed extraction (no {_EXTRACTED_MARKER} inside); "
            "remove it or choose another destination."
        )
    root, name = dest.resolve(), str(zip_path)
    with _open_zip(zip_path, name) as zf:
        infos = _zip_members(zf, name)
        for info in infos:
            _check_zip_member(info, root, zip_path)
        with _atomic_folder(dest) as partial:
            for info in infos:
                target = partial / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as file:
                    _copy_zip_member(zf, info, file, name)
            (partial / _EXTRACTED_MARKER).touch()
    return dest


def _tar_members(tar: tarfile.TarFile, name: str, folder: str,
                 files: Collection[str]) -> list[tarfile.TarInfo]:
    """The members of ``tar``, checked header by header (a bound stops the reading at once):
    only the folder ``folder`` and regular files ``folder/<one of files>``, each once, within
    the bounds."""
    expected = {f"{folder}/{file}" for file in files}
    members, seen, total = [], set(), 0
    for member in tar:
        if member.name == folder and member.isdir():
            continue
        label = f"{name}: member {member.name!r}"
        if member.name not in expected or not member.isreg():
            raise CorruptDataError(f"refusing to extract {name}: member {member.name!r} is not "
                                   f"one of the expected regular files "
                                   f"{folder}/{{{','.join(files)}}}. {_ADVICE}")
        if member.name in seen:
            raise _corrupt(label, "appears more than once")
        seen.add(member.name)
        total += member.size
        _check_size(label, member.size, MAX_MEMBER_BYTES, "MAX_MEMBER_BYTES")
        _check_size(name, total, MAX_ARCHIVE_BYTES, "MAX_ARCHIVE_BYTES")
        members.append(member)
    return members


def safe_extract_tar(tar_path: Path, dest: Path, folder: str, files: Collection[str]) -> Path:
    """Extract the regular files ``folder/<name>`` (``name`` in ``files``) of the gzip'ed tar
    ``tar_path`` into the folder ``dest`` (as ``dest/<name>``), and return ``dest``.

    Every header is checked before anything is written: any other member (another name, a
    link, a device, an escaping path) is refused, and sizes are bounded as for zips. tarfile
    itself creates nothing: only the contents of the expected files are read, with counted
    reads, into files of the expected names. ``dest`` appears complete or not at all.

    Raises:
      CorruptDataError: the file is not a readable tar.gz, or has an unexpected member.
    """
    name = str(tar_path)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = _tar_members(tar, name, folder, files)
            _check_ratio(name, sum(m.size for m in members), tar_path.stat().st_size)
            with _atomic_folder(dest) as partial:
                for member in members:
                    label = f"{name}: member {member.name!r}"
                    with tar.extractfile(member) as src, \
                            open(partial / PurePosixPath(member.name).name, "xb") as dst:
                        _copy_bounded(src, dst, member.size, label)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise _corrupt(name, f"is not a readable tar.gz ({err}): it is truncated or not a "
                             "tar.gz file") from err
    return dest
