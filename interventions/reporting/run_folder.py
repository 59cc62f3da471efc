"""Run folders: every ``fit`` writes into a folder of its own, never over another run's files.

The folder a run names (``trainer.default_root_dir``, e.g. ``runs/ioi/activscalar``) is the
*experiment* folder; each ``fit`` claims the next free ``version_N`` inside it, as Lightning's
loggers do, and a ``latest`` link points to the newest fit that finished::

    runs/ioi/activscalar/
      version_0/        config.yaml  metrics.json  intervention/  plots/  samples.md  checkpoints/
      version_1/        ...
      latest -> version_1

* a folder is claimed with an exclusive ``mkdir``, so two runs started at once get two folders;
* resuming (``--ckpt_path last`` or a checkpoint inside ``version_N/``) continues in that folder;
* ``test`` / ``validate`` write their results into the folder of the checkpoint they evaluate
  (else ``latest``) under a name no earlier result has (``test_metrics.json``,
  ``test_metrics-1.json``, ...), and never touch its ``config.yaml``;
* a plain Python ``Trainer()`` gets the same: the artefacts go beside its checkpoints, in the
  versioned folder of a TensorBoard / CSV logger (``lightning_logs/version_N``), or else in a
  claimed ``version_N`` of ``default_root_dir`` (``lightning_logs/`` when that is the current
  directory), never loose in the current directory.

Under several processes the folder is chosen once, on global rank zero, and shared with the
others (the CLI passes it to the processes Lightning launches through ``RUN_FOLDER_ENV``;
:func:`run_folder` broadcasts it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "LATEST",
    "RUN_FOLDER_ENV",
    "claim_version",
    "latest_version",
    "point_latest",
    "resolve_run",
    "run_folder",
    "set_run_folder",
    "unique_path",
    "version_folder_of",
]

LATEST = "latest"
"""Name of the link (or, where links are not allowed, a one-line text file) to the newest
finished fit of an experiment folder."""

RUN_FOLDER_ENV = "LEARNED_INTERVENTIONS_RUN_FOLDER"
"""The run folder rank zero chose, for the processes Lightning launches (read only where
``LOCAL_RANK`` is set and not 0)."""

_VERSION = re.compile(r"^version_(\d+)$")
_ATTRIBUTE = "_intervention_run_folder"


def versions(root: str | Path) -> list[int]:
    """The version numbers of ``root/version_N`` folders, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = (_VERSION.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def claim_version(root: str | Path, version: int | None = None) -> Path:
    """Create and return ``root/version_N``: the given ``version`` (refused if it exists), or the
    next free number (an exclusive ``mkdir``, so concurrent runs never share a folder)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if version is not None:
        folder = root / f"version_{version}"
        try:
            folder.mkdir()
        except FileExistsError:
            raise FileExistsError(
                f"The run folder {folder} already exists: it holds another run. Leave out "
                f"--run_version to get the next free version_N, or resume that run with "
                f"--ckpt_path {folder / 'checkpoints' / 'last.ckpt'}."
            ) from None
        return folder
    n = (versions(root) or [-1])[-1] + 1
    while True:
        folder = root / f"version_{n}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def latest_version(root: str | Path) -> Path | None:
    """The folder ``root/latest`` points to, else the highest ``root/version_N``; ``None`` when
    the experiment folder holds no version."""
    root = Path(root)
    link = root / LATEST
    if link.is_symlink() or link.is_dir():
        target = link.resolve()
        if target.is_dir():
            return target
    elif link.is_file():
        target = root / link.read_text().strip()
        if target.is_dir():
            return target
    numbers = versions(root)
    return root / f"version_{numbers[-1]}" if numbers else None


def point_latest(folder: str | Path) -> Path:
    """Point ``<parent>/latest`` at ``folder`` (a relative symlink, replaced atomically; a text
    file naming the folder where links are not allowed)."""
    folder = Path(folder)
    link = folder.parent / LATEST
    tmp = folder.parent / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(folder.name, target_is_directory=True)
        if link.is_dir() and not link.is_symlink():
            raise OSError(f"{link} is a real folder")
        os.replace(tmp, link)
    except OSError:
        if tmp.is_symlink():
            tmp.unlink()
        if not (link.is_dir() and not link.is_symlink()):
            if link.is_symlink():
                link.unlink()
            link.write_text(folder.name + "\n")
    return link


def resolve_run(path: str | Path) -> Path:
    """The run folder ``path`` names: itself when it holds a run's files (a ``version_N``, or a
    folder of an older layout with ``metrics.json`` in it), else its latest version (an
    experiment folder such as ``runs/ioi/activscalar``); ``path`` unchanged when it has none."""
    path = Path(path)
    if _VERSION.match(path.name) or (path / "metrics.json").is_file():
        return path
    return latest_version(path) or path


def version_folder_of(path: str | Path) -> Path | None:
    """The ``version_N`` folder a path is or lies in (e.g. ``version_3/checkpoints/last.ckpt``)."""
    path = Path(path).resolve()
    for parent in (path, *path.parents):
        if _VERSION.match(parent.name):
            return parent
    return None


def unique_path(path: str | Path) -> Path:
    """``path`` if no file has that name, else ``stem-1.suffix``, ``stem-2.suffix``, ..."""
    path = Path(path)
    if not path.exists():
        return path
    n = 1
    while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


def set_run_folder(trainer: Any, folder: str | Path) -> Path:
    """Fix the run folder of ``trainer`` (the CLI does this before ``fit``)."""
    folder = Path(folder)
    setattr(trainer, _ATTRIBUTE, folder)
    return folder


def run_folder(trainer: Any) -> Path:
    """The folder this trainer's run writes its artefacts to (chosen once per trainer).

    Set by the CLI (:func:`set_run_folder`); for a plain ``Trainer`` the versioned folder of its
    TensorBoard / CSV logger, else a claimed ``version_N`` of ``default_root_dir`` (of
    ``./lightning_logs`` when that is the current directory). Collective the first time under a
    process group (rank zero chooses, the others receive it): call it on every rank.
    """
    folder = getattr(trainer, _ATTRIBUTE, None)
    if folder is not None:
        return folder
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = list(getattr(trainer, "loggers", []) or [])
    strategy = getattr(trainer, "strategy", None)
    if loggers and isinstance(loggers[0], (TensorBoardLogger, CSVLogger)):
        chosen: str | None = str(trainer.log_dir)  # broadcast by Lightning
    else:
        chosen = None
        if getattr(trainer, "is_global_zero", True):
            root = Path(trainer.default_root_dir)
            if root.resolve() == Path.cwd().resolve():
                root = root / "lightning_logs"
            chosen = str(claim_version(root))
        if strategy is not None:
            chosen = strategy.broadcast(chosen)
        # without a logger Lightning would keep the checkpoints in <default_root_dir>/checkpoints:
        # keep them with the run instead (before the first is saved: call this in setup)
        loose = os.path.join(str(trainer.default_root_dir), "checkpoints")
        for callback in getattr(trainer, "checkpoint_callbacks", []):
            if getattr(callback, "dirpath", None) == loose:
                callback.dirpath = str(Path(chosen) / "checkpoints")
    return set_run_folder(trainer, chosen)
