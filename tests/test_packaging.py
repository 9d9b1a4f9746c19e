"""The install files agree, and the console script and shipped configs work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from mexit.plan import load_profile, notebook_parameters
from mexit.config import load_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _conda_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    return [req for req in pip_section if not req.startswith("-")]


def test_environment_yml_names_the_same_pins_as_pyproject() -> None:
    assert sorted(_conda_requirements()) == sorted(_pyproject_requirements())


def test_required_pins_are_exact() -> None:
    requirements = _pyproject_requirements()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "jupyter-book>=1,<2"):
        assert pin in requirements
    for name in ("timm>=1.0.20", "papermill", "seaborn", "nbval", "pytest", "mlxtend", "scikit-learn", "tqdm", "fvcore", "ipywidgets"):
        assert name in requirements


def test_console_script_runs() -> None:
    out = subprocess.run([Path(sys.executable).with_name("mexit"), "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "runs" in out.stdout and "book" in out.stdout


def test_every_shipped_config_and_profile_is_valid() -> None:
    for name in shipped_configs():
        load_config(name).validate()
    for name in ("tiny", "quick", "paper"):
        rows = notebook_parameters(load_profile(name), "table1")["rows"]
        assert rows and all(row["config"] in shipped_configs() for row in rows)


def _commands(text: str) -> list[str]:
    """The command of each line, without its comment."""
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up: two commands")[1].split("```bash")[1].split("```")[0]
    assert _commands(setup) == ["make book", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in _commands(ci)
    assert "export MEXIT_REQUIRE_BROWSER=1" in _commands(ci)  # CI fails, where a reader's make test skips, without Chromium


def _requirement_name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_and_the_environment_uses_it() -> None:
    """A reader's install is the tested one: every dependency pinned exactly in constraints.txt,
    which both installs (the Makefile's pip and the conda environment) apply."""
    lock = {}
    for line in _commands((ROOT / "constraints.txt").read_text()):
        name, separator, version = line.partition("==")
        assert separator and version, f"constraints.txt: {line!r} is not an exact pin"
        lock[_requirement_name(name)] = version
    for requirement in _pyproject_requirements():
        assert _requirement_name(requirement) in lock, f"{requirement} is not in the lock"
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1" and lock["jupyter-book"].startswith("1.")
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "-c constraints.txt" in next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))


def test_a_kernel_reading_stored_resnet_runs_imports_neither_timm_nor_scikit_learn() -> None:
    """What every page imports, and a ResNet built as a page's parameter check builds one: timm
    (half a second) and scikit-learn (a second) are imported where a timm model, a data split or a
    probe needs them, not by every notebook kernel and CLI process (test_generic builds timm's)."""
    code = (
        "import sys\n"
        "import mexit.analysis, mexit.claims, mexit.evaluate, mexit.pages, mexit.plan, mexit.plots, mexit.study\n"
        "from mexit.models import build\n"
        "build('resnet20', 10, in_chans=1, img_size=16, placement=[3, 6])\n"
        "print(sorted(m for m in ('timm', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
