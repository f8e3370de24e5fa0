"""Progress bars, metric logging, provenance records and synthetic data."""

import json

import numpy as np
import pytest

from enf_lib.progress import StaticProgress, progress
from enf_lib.provenance import provenance
from enf_lib.synthetic import shapes_dataset
from enf_lib.tracking import MetricLogger


def test_static_progress_prints_one_clean_final_line(monkeypatch, capsys):
    monkeypatch.setenv("ENF_PROGRESS", "static")
    bar = progress(total=50, desc="fitting")
    assert isinstance(bar, StaticProgress)
    for _ in range(50):
        bar.update(1)
    bar.close()
    bar.close()
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1 and "\r" not in out
    assert lines[0].startswith("fitting: 100%") and "50/50" in lines[0]


def test_progress_off_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("ENF_PROGRESS", "off")
    for _ in progress(range(3)):
        pass
    assert capsys.readouterr() == ("", "")


def test_logger_keeps_history_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    log = MetricLogger()
    log.log(1, {"loss": 0.5})
    log.log(2, {"loss": 0.25, "psnr": 6.0})
    log.save(tmp_path / "h.json")
    again = MetricLogger()
    again.load(tmp_path / "h.json", up_to_step=1)
    assert again.history == {"loss": [(1, 0.5)], "psnr": []}
    assert json.loads((tmp_path / "h.json").read_text())["psnr"] == [[2, 6.0]]


def test_wandb_is_never_required(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert MetricLogger(wandb_mode="online")._run is None, "WANDB_MODE=disabled wins"
    monkeypatch.delenv("WANDB_MODE")
    assert MetricLogger()._run is None, "off unless asked for"
    with pytest.raises(ValueError, match="wandb_mode"):
        MetricLogger(wandb_mode="loud")


def test_asking_for_wandb_without_it_says_how_to_install(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # import fails
    with pytest.raises(ImportError, match=r"enf_lib\[wandb\]"):
        MetricLogger(wandb_mode="offline")


def test_provenance_records_versions_device_and_extras():
    record = provenance(profile="quick", wall_time_s=1.5)
    assert {"code_version", "versions", "device", "date", "python"} <= set(record)
    assert record["versions"]["jax"] and record["profile"] == "quick"
    json.dumps(record)


def test_shapes_dataset_is_deterministic_and_in_range():
    a, b = shapes_dataset(5, 16, seed=3), shapes_dataset(5, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1 and a.std() > 0.05
    with pytest.raises(ValueError):
        shapes_dataset(0)
