"""The smoke build (mexit.smoke): a profile's every run capped to a few steps on generated data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from mexit.book import build_smoke_book, copy_sources
from mexit.plan import declared_parameters, load_profile, needed_runs, notebook_names
from mexit.checkpoint import read_json
from mexit.config import load_config
from mexit.smoke import SMOKE_SIZES, banner, datasets_read, ensure_data, ensure_weights, for_pages, pretrained_backbones, smoke_profile

ROOT = Path(__file__).resolve().parents[1]
FAMILY_ROWS = ("resnet34-cifar100", "msdnet-cifar100", "vit-tiny-cifar100")
"""One Table 1 row per backbone family, all on CIFAR-100 at their paper resolution (32 x 32; the ViT
with 4 x 4 patches). The 224-pixel ImageNet rows are the whole smoke build's."""


def _all_rows(profile: dict) -> list[dict]:
    groups = [profile["global_params"], *profile["notebooks"].values()]
    return [row for group in groups if group for row in group.get("rows", [])]


def test_the_smoke_profile_caps_every_row_and_reads_the_generated_data(tmp_path: Path) -> None:
    paper = load_profile("paper")
    smoke = smoke_profile(paper, tmp_path)
    rows = _all_rows(smoke)
    assert len(rows) == len(_all_rows(paper)) > 6
    for row in rows:
        config = load_config(row["config"], row["overrides"])
        assert config.train.max_steps == 1 and config.train.eval_batches == 2 and config.train.optim.batch_size == 8
        assert Path(config.data.data_root) == tmp_path.resolve() / config.data.name
        original = next(r for r in _all_rows(paper) if r["label"] == row["label"] and r["config"] == row["config"])
        assert row["overrides"][: len(original["overrides"])] == original["overrides"]  # the row's own come first
        assert config.train.dominance_every in (0, config.train.max_steps + 1)  # none, or once a phase at its start
    assert smoke["global_params"]["seeds"] == [0, 1]
    assert smoke["notebooks"]["phase_split"]["variants"] == paper["notebooks"]["phase_split"]["variants"]
    for notebook, sizes in SMOKE_SIZES.items():
        assert smoke["notebooks"][notebook].items() >= sizes.items()
    assert "max_steps" not in str(paper)  # the profile itself is untouched
    assert datasets_read(smoke) == ["cifar100", "imagenet", "tinyimagenet"]
    tiny = smoke_profile(load_profile("tiny"), tmp_path)
    assert tiny["notebooks"]["table1"]["fresh_seeds"] == [2, 3] and datasets_read(tiny) == []


def test_every_smoke_size_is_a_parameter_its_notebook_declares() -> None:
    """A smoke size reaches its notebook only where the notebook declares it (the book passes
    declared parameters alone): the paths' batch size, left at 256 because the mode-connectivity
    notebook did not declare it, made that page take an hour in the paper smoke."""
    declared = declared_parameters(ROOT, list(SMOKE_SIZES))
    for notebook, sizes in SMOKE_SIZES.items():
        assert set(sizes) <= set(declared[notebook]), f"{notebook} does not declare {sorted(set(sizes) - set(declared[notebook]))}"
    assert SMOKE_SIZES["mode_connectivity"]["batch_size"] <= 16


def test_smoke_data_is_written_where_missing_only(tmp_path: Path) -> None:
    roots = ensure_data(tmp_path, ["cifar100"])
    marker = roots["cifar100"] / "cifar-100-python" / "test"
    stamp = marker.stat().st_mtime_ns
    assert ensure_data(tmp_path, ["cifar100"]) == roots and marker.stat().st_mtime_ns == stamp


def test_a_parameter_the_profile_leaves_out_is_planned_at_the_notebooks_default(tmp_path: Path) -> None:
    """The plan trains what the notebook will read: Table 1's own default seeds when the profile
    names none, and no fresh seeds (the notebook's default, []) unless the profile names them."""
    declared = declared_parameters(ROOT, ["table1"])
    tiny = load_profile("tiny")
    del tiny["global_params"]["seeds"], tiny["notebooks"]["table1"]["fresh_seeds"]
    seeds = {config.train.seed for _, config in needed_runs(tiny, declared, tmp_path).values()}
    assert seeds == {0, 1, 2, 3, 4}
    paper = {config.train.seed for _, config in needed_runs(load_profile("paper"), declared, tmp_path, require_data=False).values()}
    assert paper == {0, 1, 2}


def test_the_banner_tops_every_page_of_a_smoke_book(tmp_path: Path) -> None:
    from mexit.book import _add_banner

    target = copy_sources(ROOT, tmp_path / "book")
    _add_banner(target / "_config.yml", banner("paper"))
    config = yaml.safe_load((target / "_config.yml").read_text())
    assert config["sphinx"]["config"]["html_theme_options"]["announcement"].startswith("Smoke build of the paper profile")
    assert config["title"].endswith("(smoke build)") and config["execute"] == {"execute_notebooks": "off"}


def test_paper_smoke_ci_part_one_row_per_family_through_table1(tmp_path: Path) -> None:
    """The CI-sized part of the paper profile's smoke: one seed of one row per backbone family at its
    paper resolution, every regime trained through the real code path, Table 1's notebook executed."""
    paper = load_profile("paper")
    paper["global_params"]["rows"] = [row for row in paper["global_params"]["rows"] if row["config"] in FAMILY_ROWS]
    profile = tmp_path / "paper-families.yaml"
    profile.write_text(yaml.safe_dump(paper))
    ours = ROOT / "book" / "generated" / "table1.ipynb"
    before = ours.stat().st_mtime_ns if ours.exists() else None
    started = time.perf_counter()
    status = build_smoke_book(str(profile), tmp_path / "smoke", build=False, root=ROOT, only=["table1"], seeds=[0])
    took = time.perf_counter() - started
    assert status == 0
    executed = json.loads((tmp_path / "smoke" / "book" / "book" / "generated" / "table1.ipynb").read_text())
    injected = "".join(next(c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", []))["source"])
    assert 'profile = "paper-families (smoke)"' in injected  # a profile file is named by its stem
    assert str(tmp_path / "smoke" / "runs") not in injected  # the store reaches the kernel as $MEXIT_RUNS, not as a page's parameter
    runs = list((tmp_path / "smoke" / "runs" / "runs").glob("*/metrics.json"))
    assert len(runs) == len(FAMILY_ROWS) * 3
    shapes = {tuple(read_json(p)["input_shape"]) for p in runs}
    assert shapes == {(3, 32, 32)}
    assert (ours.stat().st_mtime_ns if ours.exists() else None) == before  # the repository's book is not touched
    assert set(notebook_names(tmp_path / "smoke" / "book")) == set(notebook_names(ROOT))
    assert not list((tmp_path / "smoke" / "weights").glob("*")), "stand-in weights written for pages not built"
    print(f"paper smoke CI part: {took:.0f}s")


def test_a_smoke_of_some_pages_reads_only_their_rows() -> None:
    paper = load_profile("paper")
    table1 = for_pages(paper, ["table1"])
    assert table1["global_params"] == paper["global_params"] and set(table1["notebooks"]) <= {"table1"}
    assert pretrained_backbones(table1) == [] and pretrained_backbones(for_pages(paper, ["architectures"]))
    assert for_pages(paper, None) == paper


@pytest.mark.parametrize("argv", [["book", "--smoke", "x", "--root", "y"]])
def test_a_smoke_build_keeps_its_own_store(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from mexit.cli import main

    assert main(argv) == 2
    assert "--smoke keeps its runs in DIR/runs" in capsys.readouterr().err


def test_the_paper_profile_plans_the_peers_pretrained_setting_and_its_smoke_stands_local_files_in(tmp_path: Path) -> None:
    """The peers' setting (ImageNet-pretrained ConvNeXt-T, EfficientNet-V2-S, Swin-V2-S and ViT-B/16,
    on ImageNet and transferred to CIFAR-100) is in the paper profile's architectures page; its smoke
    rows start from weight files the smoke writes, not from a download."""
    paper = load_profile("paper")
    pretrained = [row for row in paper["notebooks"]["architectures"]["rows"] if load_config(row["config"], row["overrides"]).model.pretrained]
    backbones = {load_config(row["config"], row["overrides"]).model.backbone for row in pretrained}
    assert backbones == {"tv/convnext_tiny", "tv/efficientnet_v2_s", "tv/swin_v2_s", "timm/vit_base_patch16_224"}
    assert {load_config(row["config"], row["overrides"]).data.name for row in pretrained} == {"imagenet", "cifar100"}
    assert [name for name, _ in pretrained_backbones(paper)] == sorted(backbones)
    smoke = smoke_profile(paper, tmp_path)
    for row in smoke["notebooks"]["architectures"]["rows"][3:]:
        assert "model.pretrained=false" in row["overrides"]
        assert any(o.startswith(f"model.checkpoint={tmp_path / 'weights'}") for o in row["overrides"])


def test_a_smoke_of_a_pretrained_row_trains_from_the_weight_file_it_writes(tmp_path: Path) -> None:
    """End to end through the architectures page: the smoke writes the stand-in weights once (the
    same bytes again), the runs load them (their key holds the file's hash) and the page executes."""
    row = {"label": "ConvNeXt-atto (weights) / CIFAR-100", "config": "resnet34-cifar100",
           "overrides": ["model.backbone=timm/convnext_atto", "model.pretrained=true", "train.dominance_every=0"]}
    profile = tmp_path / "weights.yaml"
    profile.write_text(yaml.safe_dump({"global_params": {"rows": [row], "seeds": [0], "regimes": ["disjoint", "joint", "mixed"]}, "notebooks": {}}))
    assert build_smoke_book(str(profile), tmp_path / "smoke", build=False, root=ROOT, only=["architectures"], seeds=[0]) == 0
    (weights,) = (tmp_path / "smoke" / "weights").iterdir()
    first = weights.read_bytes()
    assert ensure_weights(tmp_path / "smoke", pretrained_backbones(load_profile(str(profile)))) == [weights] and weights.read_bytes() == first
    runs = [read_json(p) for p in (tmp_path / "smoke" / "runs" / "runs").glob("*/config.json")]
    assert len(runs) == 3 and {r["model"]["checkpoint"] for r in runs} == {str(weights)} and not any(r["model"]["pretrained"] for r in runs)
    executed = json.loads((tmp_path / "smoke" / "book" / "book" / "generated" / "architectures.ipynb").read_text())
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
