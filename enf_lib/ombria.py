"""The OMBRIA flood data set: Sentinel-1 and Sentinel-2 tiles before and after a flood.

OMBRIA (github.com/geodrak/OMBRIA) has 256x256 tiles of flood events, each seen by two sensors
before and after the flood, with a binary flood mask:

* Sentinel-1 (S1): synthetic-aperture radar, one channel (VV backscatter). Open water is a
  mirror for the radar and looks dark; radar sees through clouds.
* Sentinel-2 (S2): optical, three channels stored as an 8-bit RGB PNG holding bands B3 (green),
  B8 (near infrared) and B11 (short-wave infrared), per the OMBRIA paper: false colour, *not*
  true colour. Neither the paper nor the repository says which PNG channel holds which band;
  the pixel values suggest red = B11, green = B8, blue = B3 (flooded pixels are darkest in red,
  as water absorbs short-wave infrared most, and brighter than dry land in blue, as water
  reflects some green light). The channels are therefore named by their PNG channel.
* the mask: 1 where the tile was flooded after the event (identical for both sensors).

:func:`load_ombria` stacks every tile into 8 channels in the order :data:`OMBRIA_CHANNELS`,
groups :data:`CHANNEL_GROUPS`. It looks for the data, in order,

1. in the data folder (``data_dir`` argument, else ``ENF_DATA_DIR``): a zip ``ombria/*.zip``
   (extracted into ``cache_dir()/extracted``: the data folder is never written to), or an
   extracted tree ``ombria/[<folder>/]OmbriaS1`` + ``OmbriaS2``;
2. in the cache, from an earlier download: ``cache_dir()/ombria/OMBRIA-master.zip``;
3. as a download of the repository archive :data:`OMBRIA_URL` (about 200 MB, ``download=True``).

Only ``OmbriaS{1,2}/{train,test}/{BEFORE,AFTER,MASK}/S{1,2}_{before,after,mask}_NNNN.png`` are
read (files elsewhere, such as the archive's ``2021/`` folder, are ignored; any other file in
these folders, or one that is not really a PNG, is an error). A subset of the tiles is fine, but
the ids must match across the six folders of a split. Decoded splits are cached as
``cache_dir()/ombria/<source-key>-<split>.npz``.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from enf_lib._io import (
    CorruptDataError,
    DataNotFoundError,
    check_zip,
    digest,
    download_file,
    env_data_dir,
    file_stamp,
    not_found_message,
    read_npz,
    safe_extract_zip,
    tree_stamp,
    write_npz,
)
from enf_lib.datasets import cache_dir
from enf_lib.progress import progress

OMBRIA_URL = "https://github.com/geodrak/OMBRIA/archive/refs/heads/master.zip"
"""The repository archive that :func:`load_ombria` downloads when no local copy exists."""

TILE_SIZE = 256
"""Side of every OMBRIA tile in pixels."""

OMBRIA_CHANNELS: tuple[str, ...] = (
    "S1 before VV",
    "S2 before R", "S2 before G", "S2 before B",
    "S1 after VV",
    "S2 after R", "S2 after G", "S2 after B",
)
"""The 8 input channels of :func:`load_ombria`, in order (S2 by PNG channel: probably B11, B8,
B3; see the module docstring)."""

CHANNEL_GROUPS: dict[str, slice] = {
    "s1_before": slice(0, 1),
    "s2_before": slice(1, 4),
    "s1_after": slice(4, 5),
    "s2_after": slice(5, 8),
}
"""Channel slices of the four images of a tile (sensor x before/after)."""

_SPLITS = ("train", "test")
_SENSORS = {"S1": "L", "S2": "RGB"}            # sensor -> PIL mode of its before/after images
_KINDS = ("before", "after", "mask")
_DOWNLOAD_NAME = "OMBRIA-master.zip"


def _not_found_message(reason: str) -> str:
    layouts = (
        "      ombria/<name>.zip   (the archive of github.com/geodrak/OMBRIA, or a subset with\n"
        "                           the same layout)\n"
        "      ombria/[<folder>/]OmbriaS1/, OmbriaS2/   (the extracted tree)"
    )
    return not_found_message(
        "OMBRIA", reason, layouts,
        f"call load_ombria(download=True) with internet access (downloads {OMBRIA_URL},\n"
        "    about 200 MB, into the cache).",
    )


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def find_ombria_root(base: pathlib.Path) -> pathlib.Path | None:
    """The folder holding ``OmbriaS1/`` and ``OmbriaS2/``: ``base`` or one of its sub-folders."""
    def is_root(p: pathlib.Path) -> bool:
        return (p / "OmbriaS1").is_dir() and (p / "OmbriaS2").is_dir()

    if is_root(base):
        return base
    found = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and is_root(p))
    if len(found) > 1:
        raise CorruptDataError(f"{base} holds several OMBRIA copies "
                               f"({', '.join(p.name for p in found)}); keep only one")
    return found[0] if found else None


def _folder(root: pathlib.Path, sensor: str, split: str, kind: str) -> pathlib.Path:
    return root / f"Ombria{sensor}" / split / kind.upper()


def _ids_in(folder: pathlib.Path, sensor: str, kind: str) -> set[str]:
    """Tile ids of the PNGs in ``folder``; any other (non-hidden) entry is an error."""
    if not folder.is_dir():
        raise CorruptDataError(f"OMBRIA folder {folder} is missing")
    pattern = re.compile(rf"{sensor}_{kind}_(\d+)\.png")
    ids = set()
    for name in os.listdir(folder):
        if name.startswith("."):
            continue
        match = pattern.fullmatch(name)
        if match is None:
            raise CorruptDataError(f"unexpected file {folder / name}: OMBRIA folders hold only "
                                   f"PNGs named {sensor}_{kind}_NNNN.png")
        ids.add(match.group(1))
    return ids


def tile_ids(root: pathlib.Path, split: str) -> list[str]:
    """The sorted tile ids of ``split``, checked to be the same in all six folders.

    Raises:
      CorruptDataError: a folder is missing, has a foreign PNG name, or the ids differ (the
        message lists which ids are missing where).
    """
    found = {(s, k): _ids_in(_folder(root, s, split, k), s, k) for s in _SENSORS for k in _KINDS}
    union = set().union(*found.values())
    missing = {f"Ombria{s}/{split}/{k.upper()}": sorted(union - ids)
               for (s, k), ids in found.items() if union - ids}
    if missing:
        lines = "; ".join(f"{folder} lacks {', '.join(ids[:10])}"
                          + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
                          for folder, ids in missing.items())
        raise CorruptDataError(f"OMBRIA {split} tile ids differ between folders of {root}: "
                               f"{lines}")
    if not union:
        raise CorruptDataError(f"OMBRIA {split} split in {root} has no tiles")
    return sorted(union, key=int)


def _read_png(path: pathlib.Path, mode: str) -> np.ndarray:
    """Decode ``path``, checking that it is a PNG, its size (256x256) and PIL mode."""
    try:
        with Image.open(path, formats=["PNG"]) as image:   # only PIL's PNG decoder may read it
            if image.size != (TILE_SIZE, TILE_SIZE):
                raise CorruptDataError(f"{path} is {image.size[0]}x{image.size[1]} pixels (width "
                                       f"x height); OMBRIA tiles are {TILE_SIZE}x{TILE_SIZE}")
            if image.mode != mode:
                raise CorruptDataError(f"{path} has PIL mode {image.mode!r}, expected {mode!r}")
            return np.asarray(image)
    except UnidentifiedImageError as err:
        raise CorruptDataError(f"{path} is not a PNG file; OMBRIA tiles are PNGs") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, CorruptDataError):
            raise
        raise CorruptDataError(f"cannot read image {path}: {err}") from err


def read_ombria_split(root: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one split of the tree ``root`` (the folder holding ``OmbriaS1``, ``OmbriaS2``).

    Returns ``(inputs uint8 (N, 256, 256, 8), masks bool (N, 256, 256), ids (N,) str)``, tiles
    sorted by id, channels in :data:`OMBRIA_CHANNELS` order.

    Raises:
      CorruptDataError: ids differ between folders, a PNG has the wrong size or mode, a mask has
        values other than 0 and 255, or the S1 and S2 masks of a tile differ.
    """
    ids = tile_ids(root, split)
    n = len(ids)
    inputs = np.empty((n, TILE_SIZE, TILE_SIZE, 8), np.uint8)
    masks = np.empty((n, TILE_SIZE, TILE_SIZE), bool)
    for i, tid in enumerate(progress(ids, desc=f"decoding OMBRIA {split}", unit="tile")):
        channels = []
        for kind in ("before", "after"):
            for sensor, mode in _SENSORS.items():
                png = _read_png(_folder(root, sensor, split, kind) / f"{sensor}_{kind}_{tid}.png",
                                mode)
                channels.append(png.reshape(TILE_SIZE, TILE_SIZE, -1))
        inputs[i] = np.concatenate(channels, -1)
        tile_masks = []
        for sensor in _SENSORS:
            path = _folder(root, sensor, split, "mask") / f"{sensor}_mask_{tid}.png"
            mask = _read_png(path, "L")
            if not np.all((mask == 0) | (mask == 255)):
                raise CorruptDataError(f"{path} has values other than 0 and 255: "
                                       f"{np.unique(mask)[:8].tolist()}")
            tile_masks.append(mask == 255)
        if not np.array_equal(*tile_masks):
            raise CorruptDataError(f"the S1 and S2 masks of OMBRIA {split} tile {tid} differ")
        masks[i] = tile_masks[0]
    return inputs, masks, np.asarray(ids)


# --------------------------------------------------------------------------------------------
# Finding a source
# --------------------------------------------------------------------------------------------


def _find_source(root: pathlib.Path | None, download: bool) -> tuple[str, pathlib.Path, bool]:
    """``(cache key, path, is_zip)`` of the OMBRIA copy to read, downloading if needed."""
    if root is not None and (root / "ombria").is_dir():
        base = root / "ombria"
        zips = sorted(base.glob("*.zip"))
        if zips:
            return f"{zips[0].stem}-{digest(*file_stamp(zips[0]))}", zips[0], True
        tree = find_ombria_root(base)
        if tree is not None:
            stamp = tree_stamp(tree / "OmbriaS1") + tree_stamp(tree / "OmbriaS2")
            return f"folder-{digest(str(tree.resolve()), stamp)}", tree, False
    downloaded = cache_dir() / "ombria" / _DOWNLOAD_NAME
    if not downloaded.is_file():
        if not download:
            looked = f"no copy in {str(root)!r}" if root else "ENF_DATA_DIR unset"
            raise DataNotFoundError(_not_found_message(f"{looked}; download=False"))
        try:
            download_file(OMBRIA_URL, downloaded, desc="downloading OMBRIA", check=check_zip)
        except OSError as err:
            reason = f"downloading {OMBRIA_URL} failed: {err}"
            raise DataNotFoundError(_not_found_message(reason)) from err
    return f"download-{digest(*file_stamp(downloaded))}", downloaded, True


def _read_cache(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A cached split ``(inputs, masks, ids)``, or ``None`` if missing or malformed."""
    arrays = read_npz(path, ("inputs", "masks", "ids"))
    if arrays is None:
        return None
    inputs, masks, ids = arrays
    ok = (inputs.dtype == np.uint8 and inputs.ndim == 4 and inputs.shape[1:] ==
          (TILE_SIZE, TILE_SIZE, 8) and masks.dtype == bool
          and masks.shape == inputs.shape[:3] and ids.shape == (len(inputs),))
    return arrays if ok else None


# --------------------------------------------------------------------------------------------
# Downscaling and the loader
# --------------------------------------------------------------------------------------------


def downscale(inputs: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink tiles ``(N, S, S, C)`` and masks ``(N, S, S)`` to ``size x size``.

    Inputs: the mean over each ``f x f`` block (``f = S / size``; area averaging), rounded to
    uint8. Masks: majority vote, a block is flood when at least half of its pixels are (a tie
    counts as flood). ``size`` must divide ``S``.
    """
    side = inputs.shape[1]
    if size < 1 or side % size:
        raise ValueError(f"size={size} must be a positive divisor of the tile side {side}")
    f = side // size
    n = inputs.shape[0]
    blocks = inputs.reshape(n, size, f, size, f, -1).astype(np.float32)
    small = np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)
    fraction = masks.reshape(n, size, f, size, f).mean(axis=(2, 4))
    return small, fraction >= 0.5


def load_ombria(
    split: str,
    *,
    size: int | None = None,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OMBRIA tiles as ``(inputs, masks, ids)``.

    Args:
      split: ``"train"`` or ``"test"``.
      size: side of the returned tiles (a divisor of 256, see :func:`downscale`); default 256.
      limit: only the first ``limit`` tiles by id.
      data_dir: the data folder to look in (default ``ENF_DATA_DIR``); never written to.
      download: download the repository archive when no local copy exists.

    Returns:
      inputs uint8 ``(N, size, size, 8)`` in :data:`OMBRIA_CHANNELS` order, masks bool
      ``(N, size, size)`` (True = flooded), ids ``(N,)`` strings such as ``"0421"``.

    Raises:
      ValueError: bad ``split``, ``size`` or ``limit``.
      DataNotFoundError: no copy found and none could be downloaded.
      CorruptDataError: a copy was found but is broken (the message says what and where).
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown OMBRIA split {split!r}; use 'train' or 'test'")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of tiles, got {limit}")
    if size is not None and (size < 1 or TILE_SIZE % size):
        raise ValueError(f"size={size} must be a positive divisor of {TILE_SIZE}")
    if data_dir is not None and not pathlib.Path(data_dir).is_dir():
        raise DataNotFoundError(_not_found_message(f"data_dir={str(data_dir)!r} is not a folder"))
    root = pathlib.Path(data_dir) if data_dir is not None else env_data_dir()
    key, path, is_zip = _find_source(root if root is not None and root.is_dir() else None,
                                     download)

    cache_path = cache_dir() / "ombria" / f"{key}-{split}.npz"
    cached = _read_cache(cache_path)
    if cached is None:
        tree = safe_extract_zip(path, cache_dir() / "extracted" / key) if is_zip else path
        found = find_ombria_root(tree)
        if found is None:
            raise CorruptDataError(f"{path} holds no folder with OmbriaS1/ and OmbriaS2/ "
                                   "(at the top or one level down)")
        cached = read_ombria_split(found, split)
        write_npz(cache_path, inputs=cached[0], masks=cached[1], ids=cached[2])
    inputs, masks, ids = cached
    if limit is not None:
        if limit > len(ids):
            raise ValueError(f"limit={limit} exceeds the {len(ids)} tiles of the {split} split")
        inputs, masks, ids = inputs[:limit], masks[:limit], ids[:limit]
    if size is not None and size != TILE_SIZE:
        inputs, masks = downscale(inputs, masks, size)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(masks), ids.copy()
