"""Measured training rates, and the GPU-hours `mexit plan` turns a plan's MACs into."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mexit import sweep, throughput
from mexit.cli import main
from mexit.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _record_tiny(path: Path, device: str = "NVIDIA H200", images_per_s: float = 1000.0) -> None:
    config = load_config("tiny")
    macs = {"P1": 2e6, "P2": 3e6, "P3": 3e6}
    throughput.record(path, config, device, {"P1": images_per_s, "P2": images_per_s / 2, "P3": images_per_s * 2}, macs)


def test_a_record_holds_each_phases_rate_in_macs_a_second(tmp_path: Path) -> None:
    path = tmp_path / "throughput.json"
    _record_tiny(path)
    rates = throughput.load(path)
    assert rates is not None and rates.device == "NVIDIA H200"
    assert dict(rates.rates["resnet20/digits"]) == {"P1": 2e9, "P2": 1.5e9, "P3": 6e9}
    config = load_config("tiny", ["train.regime=disjoint"])
    assert rates.phase_seconds(config, [4e9, 12e9]) == pytest.approx([2.0, 2.0])  # P1 at 2e9, P3 at 6e9 MACs/s
    assert rates.phase_seconds(load_config("mnist5k-msdnet-quick"), [1.0]) is None  # no msdnet/mnist5k measurement
    _record_tiny(path, device="CPU")  # another device replaces, never mixes
    assert throughput.load(path).device == "CPU" and list(throughput.load(path).rates) == ["resnet20/digits"]
    assert throughput.load(tmp_path / "none.json") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "is not valid JSON"), ('{"rates": {}}', "must hold a device and rates"),
     ('{"device": "x", "rates": {"a/b": {"P1": 1, "P2": 0, "P3": 1}}}', "a/b needs a positive rate")],
)
def test_a_broken_throughput_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "throughput.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        throughput.load(path)


def test_the_plan_gives_gpu_hours_from_a_throughput_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["plan", "--profile", "tiny", "--root", str(tmp_path)]) == 0
    assert f"no throughput file at {tmp_path / 'throughput.json'}" in capsys.readouterr().out
    _record_tiny(tmp_path / "throughput.json")
    assert main(["plan", "--profile", "tiny", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gpu_hours" in out and "estimated NVIDIA H200-hours per row" in out and "estimated total:" in out
    runs = sweep.plan("tiny", ROOT, tmp_path)
    rates = throughput.load(tmp_path / "throughput.json")
    table = sweep.plan_table(runs, tmp_path, throughput=rates)
    seconds = [rates.phase_seconds(run.config, sweep.phase_macs(run.config)) for run in runs]
    expected = [sum(s) / 3600 if s is not None else math.nan for s in seconds]
    assert table["gpu_hours"].tolist() == pytest.approx(expected, nan_ok=True)  # NaN: a backbone not measured
    total, unmeasured = sweep.total_gpu_hours(runs, rates)
    assert unmeasured == sorted({throughput.entry(run.config) for run, s in zip(runs, seconds) if s is None})
    assert unmeasured == ["resnet32/digits", "timm/convnext_atto/digits", "timm/swin_tiny_patch4_window7_224/digits"]  # the scaling and architectures pages'
    assert 0 < total < table["gpu_hours"].sum()  # shared P1s once
    assert main(["plan", "--profile", "tiny", "--throughput", str(tmp_path / "missing.json")]) == 2
    assert "--throughput: no file at" in capsys.readouterr().err


def test_the_benchmark_writes_what_the_plan_reads(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "throughput.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paper_throughput.py"), "--device", "cpu", "--batch", "2", "--steps", "1",
         "--rows", "MSDNet / CIFAR-100", "--write", str(path)],
        check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    values = json.loads(path.read_text())
    assert values["device"] == "CPU" and set(values["rates"]) == {"msdnet/cifar100"}
    assert all(rate > 0 for rate in values["rates"]["msdnet/cifar100"].values())


def test_the_benchmark_times_one_row_a_backbone_and_dataset_of_the_paper_profile_pretrained_ones_included() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_throughput", ROOT / "benchmarks" / "paper_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.paper_rows()
    entries = [f"{c.model.backbone}/{c.data.name}" for c in rows.values()]
    assert len(entries) == len(set(entries))
    assert {"tv/swin_v2_s/imagenet", "tv/swin_v2_s/cifar100", "timm/vit_base_patch16_224/cifar100", "msdnet/cifar100"} <= set(entries)
