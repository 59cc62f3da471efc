"""The documentation: the strict site build, and every Python example in it runs.

``mkdocs build --strict`` fails on a broken link or anchor, a missing page and an API name that
does not resolve. Every ```python block of ``docs/*.md`` runs: the blocks of one page in order,
in one fresh process, in a temporary folder that has ``configs/`` and ``examples/`` of the
repository and a real ActivScalar run on SmolLM2 at ``runs/ioi/activscalar/latest`` (what the
examples load). A block that cannot run here (a GPU, several devices, internet, a long training)
is preceded by ``<!-- not run: REASON -->``; the reason is required.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"(<!-- not run: ([^>]*?) -->\s*\n)?```python\n(.*?)```", re.S)
CONFIG_PATH = re.compile(r"configs/[\w./-]+\.yaml")


def python_blocks(page: Path) -> list[tuple[str | None, str]]:
    """``(skip reason or None, code)`` for every ```python block of a page."""
    return [(m.group(2), m.group(3)) for m in FENCE.finditer(page.read_text())]


def pages_with_code() -> list[Path]:
    """Every docs page with a Python example, and the README (its example is the first a user
    sees)."""
    return sorted(p for p in [*DOCS.glob("*.md"), ROOT / "README.md"] if python_blocks(p))


def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "api" / "interventions" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "interventions" / "index.html").read_text()
    assert "attach" in api and "load_intervention" in api


def test_every_api_name_has_a_reference_entry():
    import interventions

    text = (DOCS / "api" / "interventions.md").read_text()
    missing = [
        name
        for name in interventions.__all__
        if f".{name}\n" not in text + "\n" and f"`{name}`" not in text
    ]
    assert not missing, f"docs/api/interventions.md lacks {missing}"


def test_every_config_named_in_the_docs_exists():
    named = set()
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        named |= set(CONFIG_PATH.findall(page.read_text()))
    assert named, "no config named anywhere in the docs"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"the docs name configs that do not exist: {missing}"


def test_skipped_examples_say_why():
    for page in DOCS.glob("*.md"):
        for reason, _ in python_blocks(page):
            assert reason is None or reason.strip(), (
                f"{page.name}: '<!-- not run: -->' needs a reason"
            )


@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory):
    """A folder like a user's checkout after `make train`: configs/, examples/ and a real (short)
    ActivScalar run on SmolLM2 at runs/ioi/activscalar/latest."""
    work = tmp_path_factory.mktemp("docs_examples")
    for name in ("configs", "examples", "tools"):
        (work / name).symlink_to(ROOT / name)
    fit = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "fit",
            "--config",
            str(ROOT / "configs/ioi/activscalar.yaml"),
            "--trainer.max_epochs=1",
            "--model.refit_epochs=0",
            "--data.num_train=8",
            "--data.num_val=4",
            "--data.num_test=4",
            "--trainer.precision=32-true",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert (work / "runs/ioi/activscalar/latest/intervention").is_dir()
    return work


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: p.name)
def test_the_python_examples_run(page, docs_workdir):
    code = "\n\n".join(block for reason, block in python_blocks(page) if reason is None)
    if not code:
        pytest.fail(f"{page.name}: every python block is marked 'not run'")
    script = docs_workdir / f"example_{page.stem}.py"
    script.write_text(code)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=docs_workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, f"{page.name}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
