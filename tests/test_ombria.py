"""The OMBRIA loader on tiny synthetic copies (offline), and on the local copy when present."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enf_lib import _io, ombria
from enf_lib._io import check_zip, download_file
from enf_lib.datasets import CorruptDataError, DataNotFoundError
from enf_lib.ombria import (
    CHANNEL_GROUPS,
    OMBRIA_CHANNELS,
    TILE_SIZE,
    downscale,
    load_ombria,
)

ENV_DATA_DIR = os.environ.get("ENF_DATA_DIR")  # read before the fixture below clears it
PREFIX = "OMBRIA-master"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty cache, no data folder and no working download URL."""
    monkeypatch.setenv("ENF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ENF_DATA_DIR", raising=False)
    monkeypatch.setattr(ombria, "OMBRIA_URL", (tmp_path / "no-such.zip").as_uri())


# ------------------------------------------------------------------------------------------
# Tiny OMBRIA copies: tile i of a split has value 10 * c + i in input channel c, and flood in
# its first i + 1 rows.
# ------------------------------------------------------------------------------------------


def _tile(index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    shape = (TILE_SIZE, TILE_SIZE)
    value = [np.full(shape, 10 * c + index, np.uint8) for c in range(8)]
    images = {"S1_before": value[0], "S2_before": np.stack(value[1:4], -1),
              "S1_after": value[4], "S2_after": np.stack(value[5:8], -1)}
    mask = np.zeros(shape, np.uint8)
    mask[: index + 1] = 255
    return images, mask


def make_tree(root: Path, ids: dict[str, list[str]]) -> Path:
    """An OMBRIA tree under ``root`` with the given tile ids per split; returns ``root``."""
    for split, tile_ids in ids.items():
        for i, tid in enumerate(tile_ids):
            images, mask = _tile(i)
            for sensor in ("S1", "S2"):
                for kind in ("before", "after"):
                    _save(root / f"Ombria{sensor}/{split}/{kind.upper()}/{sensor}_{kind}_{tid}.png",
                          images[f"{sensor}_{kind}"])
                _save(root / f"Ombria{sensor}/{split}/MASK/{sensor}_mask_{tid}.png", mask)
    return root


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def zip_tree(tree: Path, zip_path: Path, prefix: str = PREFIX) -> Path:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(tree)}")
    return zip_path


IDS = {"train": ["0002", "0010", "0007"], "test": ["0005", "0001"]}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder with ``ombria/ombria.zip`` holding :data:`IDS`."""
    tree = make_tree(tmp_path / "tree", IDS)
    zip_tree(tree, tmp_path / "data" / "ombria" / "ombria.zip")
    return tmp_path / "data"


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def test_channels_and_groups_are_consistent():
    assert len(OMBRIA_CHANNELS) == 8
    covered = sorted(i for sl in CHANNEL_GROUPS.values() for i in range(8)[sl])
    assert covered == list(range(8))
    assert OMBRIA_CHANNELS[CHANNEL_GROUPS["s1_after"]][0] == "S1 after VV"


def test_load_from_zip_in_data_dir(data_dir: Path, tmp_path: Path):
    inputs, masks, ids = load_ombria("train", data_dir=data_dir)
    assert inputs.shape == (3, TILE_SIZE, TILE_SIZE, 8) and inputs.dtype == np.uint8
    assert masks.shape == (3, TILE_SIZE, TILE_SIZE) and masks.dtype == bool
    assert ids.tolist() == ["0002", "0007", "0010"]                  # sorted by id
    # tile "0007" was written third (index 2): value 10 c + 2, flood in its first 3 rows
    np.testing.assert_array_equal(inputs[1, 0, 0], 10 * np.arange(8) + 2)
    assert masks[1].sum() == 3 * TILE_SIZE and masks[1, :3].all()
    cached = list((tmp_path / "cache" / "ombria").glob("*-train.npz"))
    assert len(cached) == 1
    test_inputs, _, test_ids = load_ombria("test", data_dir=data_dir, limit=1)
    assert test_ids.tolist() == ["0001"] and test_inputs.shape[0] == 1


def test_second_load_uses_the_npz_cache(data_dir: Path, tmp_path: Path, monkeypatch):
    first = load_ombria("test", data_dir=data_dir)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(ombria, "read_ombria_split", fail)
    second = load_ombria("test", data_dir=data_dir)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_load_from_env_and_extracted_folder(tmp_path: Path, monkeypatch):
    make_tree(tmp_path / "data" / "ombria" / "copy", IDS)
    monkeypatch.setenv("ENF_DATA_DIR", str(tmp_path / "data"))
    inputs, masks, ids = load_ombria("test", size=64)
    assert inputs.shape == (2, 64, 64, 8) and masks.shape == (2, 64, 64)
    assert ids.tolist() == ["0001", "0005"]


def test_downscale_averages_inputs_and_votes_masks():
    inputs = np.zeros((1, 4, 4, 1), np.uint8)
    inputs[0, :2, :2, 0] = [[0, 10], [20, 31]]                      # block mean 15.25 -> 15
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, :2] = True                                           # 2 of 4: a tie -> flood
    masks[0, 2, 2] = True                                            # 1 of 4 -> no flood
    small, small_masks = downscale(inputs, masks, 2)
    np.testing.assert_array_equal(small[0, :, :, 0], [[15, 0], [0, 0]])
    np.testing.assert_array_equal(small_masks[0], [[True, False], [False, False]])
    with pytest.raises(ValueError, match="divisor"):
        downscale(inputs, masks, 3)


def test_bad_arguments(data_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="split"):
        load_ombria("val", data_dir=data_dir)
    with pytest.raises(ValueError, match="divisor"):
        load_ombria("test", size=100, data_dir=data_dir)
    with pytest.raises(ValueError, match="limit"):
        load_ombria("test", limit=0, data_dir=data_dir)
    with pytest.raises(ValueError, match="exceeds"):
        load_ombria("test", limit=3, data_dir=data_dir)
    with pytest.raises(DataNotFoundError, match="not a folder"):
        load_ombria("test", data_dir=tmp_path / "missing")


# ------------------------------------------------------------------------------------------
# Broken copies
# ------------------------------------------------------------------------------------------


def _data_with_tree(tmp_path: Path, edit) -> Path:
    tree = make_tree(tmp_path / "tree", IDS)
    edit(tree)
    zip_tree(tree, tmp_path / "data" / "ombria" / "ombria.zip")
    return tmp_path / "data"


def test_mismatched_ids_are_reported(tmp_path: Path):
    data = _data_with_tree(tmp_path, lambda tree: (
        tree / "OmbriaS2/train/AFTER/S2_after_0010.png").unlink())
    with pytest.raises(CorruptDataError, match=r"OmbriaS2/train/AFTER lacks 0010"):
        load_ombria("train", data_dir=data)


@pytest.mark.parametrize("name, array, match", [
    ("OmbriaS1/test/BEFORE/S1_before_0001.png", np.zeros((128, 256), np.uint8), "256x128"),
    ("OmbriaS1/test/AFTER/S1_after_0001.png", np.zeros((256, 256, 3), np.uint8), "mode 'RGB'"),
    ("OmbriaS2/test/MASK/S2_mask_0001.png", np.full((256, 256), 7, np.uint8), "other than 0"),
])
def test_wrong_png_size_mode_or_values(tmp_path: Path, name: str, array: np.ndarray,
                                       match: str):
    data = _data_with_tree(tmp_path, lambda tree: _save(tree / name, array))
    with pytest.raises(CorruptDataError, match=match):
        load_ombria("test", data_dir=data)


def test_masks_of_the_two_sensors_must_agree(tmp_path: Path):
    mask = np.zeros((256, 256), np.uint8)
    data = _data_with_tree(tmp_path, lambda tree: _save(
        tree / "OmbriaS2/test/MASK/S2_mask_0005.png", mask))
    with pytest.raises(CorruptDataError, match="masks of OMBRIA test tile 0005 differ"):
        load_ombria("test", data_dir=data)


def test_foreign_png_name(tmp_path: Path):
    data = _data_with_tree(tmp_path, lambda tree: _save(
        tree / "OmbriaS1/test/MASK/mask_1.png", np.zeros((256, 256), np.uint8)))
    with pytest.raises(CorruptDataError, match="S1_mask_NNNN.png"):
        load_ombria("test", data_dir=data)


def test_file_that_is_not_a_png(tmp_path: Path):
    """A JPEG under a PNG name is refused, though PIL could decode it."""
    name = "OmbriaS1/test/BEFORE/S1_before_0001.png"
    data = _data_with_tree(tmp_path, lambda tree: Image.fromarray(
        np.zeros((256, 256), np.uint8)).save(tree / name, format="JPEG"))
    with pytest.raises(CorruptDataError, match=r"S1_before_0001\.png is not a PNG file"):
        load_ombria("test", data_dir=data)


@pytest.mark.parametrize("name", ["S1_before_0001.jpg", "notes.txt"])
def test_other_files_in_a_png_folder(tmp_path: Path, name: str):
    def add(tree: Path) -> None:
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(
            tree / "OmbriaS1/test/BEFORE" / name, format="JPEG")

    data = _data_with_tree(tmp_path, add)
    with pytest.raises(CorruptDataError, match=rf"unexpected file .*BEFORE/{name}: OMBRIA "
                                               r"folders hold only PNGs"):
        load_ombria("test", data_dir=data)


def test_corrupt_zip(data_dir: Path):
    zip_path = data_dir / "ombria" / "ombria.zip"
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="not a readable zip"):
        load_ombria("test", data_dir=data_dir)


def test_path_escaping_member_is_refused(tmp_path: Path):
    zip_path = tmp_path / "data" / "ombria" / "evil.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("../outside.txt", b"evil")
    with pytest.raises(CorruptDataError, match="'..' path component"):
        load_ombria("test", data_dir=tmp_path / "data")
    assert not (tmp_path / "cache" / "outside.txt").exists()


def test_zip_without_ombria_folders(tmp_path: Path):
    zip_path = tmp_path / "data" / "ombria" / "other.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("README.md", b"nothing here")
    with pytest.raises(CorruptDataError, match="no folder with OmbriaS1"):
        load_ombria("test", data_dir=tmp_path / "data")


# ------------------------------------------------------------------------------------------
# Downloading (from local file:// URLs)
# ------------------------------------------------------------------------------------------


def test_download_when_no_local_copy(tmp_path: Path, monkeypatch):
    archive = zip_tree(make_tree(tmp_path / "tree", IDS), tmp_path / "server" / "master.zip")
    monkeypatch.setattr(ombria, "OMBRIA_URL", archive.as_uri())
    inputs, masks, ids = load_ombria("test")
    assert ids.tolist() == ["0001", "0005"] and inputs.shape[-1] == 8
    folder = tmp_path / "cache" / "ombria"
    assert (folder / "OMBRIA-master.zip").is_file()
    assert not list(folder.glob(".*"))                   # no temporary file left
    archive.unlink()                                     # the earlier download is reused
    assert load_ombria("train")[2].tolist() == ["0002", "0007", "0010"]


def test_download_refused_offline_or_disabled(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="download=False"):
        load_ombria("test", download=False)
    with pytest.raises(DataNotFoundError, match="downloading .* failed"):
        load_ombria("test")
    assert not list((tmp_path / "cache" / "ombria").glob("*"))


def test_download_of_a_broken_file_leaves_nothing(tmp_path: Path):
    source = tmp_path / "server" / "master.zip"
    source.parent.mkdir()
    source.write_bytes(b"<html>not a zip</html>")
    dest = tmp_path / "cache" / "ombria" / "OMBRIA-master.zip"
    with pytest.raises(CorruptDataError, match="the download of .* is not a readable zip"):
        download_file(source.as_uri(), dest, desc="downloading", check=check_zip)
    assert list(dest.parent.iterdir()) == []


def test_download_of_an_oversized_zip_is_not_kept(tmp_path: Path, monkeypatch):
    archive = zip_tree(make_tree(tmp_path / "tree", IDS), tmp_path / "server" / "master.zip")
    monkeypatch.setattr(ombria, "OMBRIA_URL", archive.as_uri())
    monkeypatch.setattr(_io, "MAX_ARCHIVE_BYTES", archive.stat().st_size // 2)
    with pytest.raises(CorruptDataError, match="the download of .* would expand to"):
        load_ombria("test")
    assert list((tmp_path / "cache" / "ombria").iterdir()) == []


def test_download_streams_a_valid_zip(tmp_path: Path):
    source = tmp_path / "server" / "a.zip"
    source.parent.mkdir()
    with zipfile.ZipFile(source, "w") as zf:
        zf.writestr("x.txt", os.urandom(3 << 20))                   # several 1 MiB chunks
    dest = download_file(source.as_uri(), tmp_path / "out" / "a.zip", desc="downloading",
                         check=check_zip)
    assert dest.read_bytes() == source.read_bytes()


# ------------------------------------------------------------------------------------------
# The local copy of the real data
# ------------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.skipif(not ENV_DATA_DIR, reason="ENF_DATA_DIR is not set")
def test_real_test_split(tmp_path: Path):
    inputs, masks, ids = load_ombria("test", size=32, data_dir=ENV_DATA_DIR)
    assert inputs.shape == (70, 32, 32, 8) and masks.shape == (70, 32, 32)
    assert len(set(ids.tolist())) == 70
    assert 0.30 < masks.mean() < 0.36                                 # flood fraction ~ 0.33
    assert json.loads(json.dumps(ids.tolist()))[0] == ids[0]


# ------------------------------------------------------------------------------------------
# The experiment, end to end at toy scale
# ------------------------------------------------------------------------------------------


def _toy_config():
    import dataclasses

    from enf_lib.config import ENFConfig, FitConfig
    from enf_lib.experiments.ombria_segmentation import Config, SegConfig

    return Config(
        size=16, num_train=4,
        enf=ENFConfig(num_out=8, num_latents=4, latent_dim=4, hidden_dim=8, att_dim=4,
                      num_heads=1, num_freqs=4),
        fit=FitConfig(batch_size=2, inner_steps=1, lr_pose=0.0, second_order=False,
                      inner_coords=32, outer_coords=32),
        meta_steps=2,
        seg=dataclasses.replace(SegConfig(hidden_dim=8, att_dim=4, num_heads=1, num_freqs=4),
                                steps=2, batch_size=2, coords_per_step=32),
        fit_batch_size=4, decode_batch_size=2, decode_chunk=64, num_show=2)


def test_config_validation():
    import dataclasses

    from enf_lib.experiments.ombria_segmentation import PROFILES, SegConfig

    config = _toy_config()
    for field, bad in (("size", dict(size=48)), ("num_train", dict(num_train=1)),
                       ("threshold", dict(threshold=1.0)), ("meta_steps", dict(meta_steps=0)),
                       ("num_out", dict(enf=dataclasses.replace(config.enf, num_out=3)))):
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(config, **bad)
    with pytest.raises(ValueError, match="lr"):
        SegConfig(lr=0.0)
    seg_enf = config.seg.enf(config.enf)
    assert seg_enf.num_out == 1 and seg_enf.num_latents == config.enf.num_latents
    assert set(PROFILES) == {"quick", "standard", "full"}
    assert PROFILES["full"].size == 256 and PROFILES["full"].enf.num_latents == 256


@pytest.mark.slow
def test_experiment_runs_every_stage_and_reuses_them(tmp_path: Path, monkeypatch):
    from enf_lib.experiments import ombria_segmentation as experiment
    from enf_lib.experiments.runner import Run, load_metrics

    ids = {"train": ["0001", "0002", "0003", "0004"], "test": ["0005", "0006"]}
    zip_tree(make_tree(tmp_path / "tree", ids), tmp_path / "data" / "ombria" / "s.zip")
    monkeypatch.setenv("ENF_DATA_DIR", str(tmp_path / "data"))
    config = _toy_config()
    metrics = experiment.run(config, Run(tmp_path / "run", experiment.NAME, "toy", config,
                                         verbose=False))
    for key in ("test_mean_iou", "test_pixel_accuracy", "test_fw_iou", "test_flood_iou",
                "test_flood_f1", "test_psnr", "test_psnr_s1_before", "test_psnr_s2_after",
                "baseline_no_flood_mean_iou"):
        assert np.isfinite(metrics[key]) or key == "test_flood_f1", key
    assert 0 <= metrics["test_mean_iou"] <= 1
    assert set(metrics["wall_time_s"]) == {"meta_train", "fit_latents_train",
                                           "fit_latents_test", "reconstruct_test",
                                           "train_mask_decoder", "predict_test"}
    assert load_metrics(tmp_path / "run")["provenance"]["config"]["size"] == 16
    figures = sorted(p.stem for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert figures == ["inputs", "latents", "masks", "reconstructions"]

    run2 = Run(tmp_path / "run", experiment.NAME, "toy", config, verbose=False)
    again = experiment.run(config, run2)
    assert all(record["reused"] for record in run2.stages.values())
    assert again["test_mean_iou"] == metrics["test_mean_iou"]
    # A mask decoder setting reruns the mask decoder and what reads it, nothing upstream.
    changed = dataclasses.replace(config, seg=dataclasses.replace(config.seg, lr=2e-3))
    run3 = Run(tmp_path / "run", experiment.NAME, "toy", changed, verbose=False)
    experiment.run(changed, run3)
    assert {n for n, r in run3.stages.items() if not r["reused"]} == {"train_mask_decoder",
                                                                      "predict_test"}


@pytest.mark.slow
def test_memory_estimate_of_a_toy_config():
    from enf_lib.experiments.ombria_segmentation import memory_estimate

    estimate = memory_estimate(_toy_config(), num_train=4)
    assert set(estimate) == {"meta_step", "mask_step", "decode"}
    assert all(v["gb"] > 0 and v["tflop"] > 0 for v in estimate.values())


def test_group_psnr_by_hand():
    from enf_lib.experiments.ombria_segmentation.stages import group_psnr

    target = np.full((2, 4, 4, 8), 51, np.uint8)                      # 0.2 in [0, 1]
    pred = np.full((2, 4, 4, 8), 0.2, np.float32)
    pred[..., CHANNEL_GROUPS["s1_after"]] += 0.1                      # MSE 0.01 -> 20 dB
    scores = group_psnr(pred, target)
    assert set(scores) == set(CHANNEL_GROUPS)
    np.testing.assert_allclose(scores["s1_after"], [20.0, 20.0], rtol=1e-4)
    assert np.all(scores["s2_before"] > 60)


def test_cli_takes_overrides_after_the_options(capsys):
    from enf_lib.experiments.__main__ import main

    assert main(["ombria-segmentation", "--profile", "quick", "--show-config",
                 "seg.steps=3", "size=64"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["seg"]["steps"] == 3 and shown["size"] == 64
