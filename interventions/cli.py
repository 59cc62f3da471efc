"""The command line: a LightningCLI with this project's defaults.

* model and data are chosen by class (``--model InterventionModule --data IOIDataModule`` or
  ``class_path`` in a YAML config; subclass mode);
* ``data.backbone`` is linked to ``model.backbone`` so the tokenizer always matches the model;
* the default logger is Weights & Biases in offline mode, writing into the run folder
  (``trainer.default_root_dir``); ``wandb sync <run>/wandb/offline-run-*`` uploads it later;
* every ``fit`` writes into a folder of its own, ``<default_root_dir>/version_N/``
  (:mod:`interventions.reporting.run_folder`), and ``<default_root_dir>/latest`` points to the
  newest one that finished; ``--run_version N`` names the version (as every process of a
  ``torchrun`` / SLURM job must);
* the last checkpoint is kept in ``<run>/checkpoints/last.ckpt`` (``--ckpt_path last`` resumes the
  latest run, in its folder) and the resolved config is saved beside it as ``<run>/config.yaml``
  by the ``fit`` that made the folder only: ``test`` / ``validate`` evaluate a checkpoint and
  write their results into its folder without touching its config.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from interventions.core.errors import find_config_error
from interventions.reporting.run_folder import (
    RUN_FOLDER_ENV,
    claim_version,
    latest_version,
    point_latest,
    set_run_folder,
    unique_path,
    version_folder_of,
)


class RunConfigCallback(SaveConfigCallback):
    """Saves the resolved config as ``<run>/config.yaml``, for ``fit`` only: a resumed fit keeps
    the folder's config and saves its own as ``config-1.yaml``; ``test`` / ``validate`` /
    ``predict`` save nothing (their results go beside the fit's artefacts)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or self.already_saved:
            return
        if trainer.is_global_zero:  # into the run folder, whatever folder a logger keeps
            run = Path(trainer.default_root_dir)
            run.mkdir(parents=True, exist_ok=True)
            path = unique_path(run / self.config_filename)
            self.parser.save(self.config, str(path), skip_none=False, multifile=self.multifile)
        self.already_saved = True


def _external_launch() -> bool:
    """Whether this process is one of several started by torchrun / SLURM (not by Lightning's
    own launcher, which passes the run folder on)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and RUN_FOLDER_ENV not in os.environ


def _launched_child() -> bool:
    return os.environ.get("LOCAL_RANK", "0") != "0" and RUN_FOLDER_ENV in os.environ


def _is_rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


class InterventionCLI(LightningCLI):
    """LightningCLI with the project's links and defaults."""

    run_folder: Path | None = None
    """This run's folder (``<default_root_dir>/version_N``), chosen before the classes are built."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone")
        parser.add_argument(
            "--run_version",
            type=int | None,
            default=None,
            help="fit into <default_root_dir>/version_N with this N (refused if it exists); "
            "default: the next free N. Every process of a torchrun / SLURM job must pass the "
            "same N.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        root = Path(trainer.get("default_root_dir") or "runs/default")
        folder = self._choose_run_folder(root, config)
        self.run_folder = folder
        trainer["default_root_dir"] = str(folder)
        logger = trainer.get("logger")
        if isinstance(logger, dict) or hasattr(logger, "get"):
            init = logger.get("init_args")
            if init is not None and init.get("save_dir") in (None, "", ".", str(root)):
                init["save_dir"] = str(folder)  # any logger: inside this run's folder
            if init is not None and "WandbLogger" in str(logger.get("class_path", "")):
                if not init.get("name"):
                    init["name"] = f"{root.name}/{folder.name}"

    def _choose_run_folder(self, root: Path, config: Any) -> Path:
        """The version folder this command works in: a new one for ``fit`` (or the resumed
        run's), the evaluated checkpoint's (else ``latest``) for the other commands."""
        if _launched_child():  # a process Lightning's DDP launcher started: rank zero chose
            return Path(os.environ[RUN_FOLDER_ENV])
        ckpt = config.get("ckpt_path")
        version = config.get("run_version")
        if _external_launch() and version is None:
            raise SystemExit(
                "This process is one of several started by torchrun / SLURM: pass the same "
                "--run_version N to every process so that they write one run folder."
            )
        resumed = None
        if ckpt == "last":
            resumed = latest_version(root)
        elif ckpt and ckpt not in ("best", "hpc", "registry"):
            resumed = version_folder_of(ckpt)
        if self.subcommand != "fit" and resumed is None:
            resumed = latest_version(root)
        if resumed is not None:
            folder = resumed
        elif version is not None and not _is_rank_zero():
            folder = root / f"version_{version}"  # rank zero creates it
        else:
            folder = claim_version(root, version)
        os.environ[RUN_FOLDER_ENV] = str(folder)  # for the processes a DDP launcher starts
        if _is_rank_zero():
            what = "resumes in" if resumed is not None and self.subcommand == "fit" else "writes to"
            print(f"{self.subcommand or 'run'} {what} {folder}", flush=True)
        return folder

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        run = Path(self.trainer.default_root_dir)
        set_run_folder(self.trainer, run)
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run / "checkpoints")

    def after_fit(self) -> None:
        """Point ``<default_root_dir>/latest`` at the folder of the fit that just finished."""
        if self.trainer.is_global_zero and self.run_folder is not None:
            point_latest(self.run_folder)
            rank_zero_info(f"latest -> {self.run_folder}")


def trainer_defaults() -> dict:
    """Defaults every run gets unless its config says otherwise."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"offline": True, "project": "learned-interventions"},
        },
        "callbacks": [
            ModelCheckpoint(
                dirpath=None,
                filename="{epoch}-{step}",
                save_last=True,
                save_top_k=1,  # the newest epoch (no monitor); last.ckpt is saved with it
            )
        ],
        "log_every_n_steps": 1,
    }


def build_cli(args: list[str] | None = None, run: bool = True) -> InterventionCLI:
    """The CLI with the project's defaults; ``run=False`` only parses and instantiates (then
    ``cli.trainer.fit(cli.model, cli.datamodule)`` trains), as the drivers' runner does
    (:func:`interventions.experiments.runner.fit_run`)."""
    return InterventionCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": False},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> InterventionCLI:
    """Run the CLI (``train.py`` calls this).

    A configuration error (:class:`~interventions.core.errors.ConfigError`: an unknown site or
    backbone, an unsupported architecture, an empty training split), also one jsonargparse
    wrapped while building the model or data module, ends the run with its one-line message and
    exit status 1 instead of a traceback; the run folder claimed for it is removed while empty.
    """
    try:
        return build_cli(args)
    except Exception as err:
        config_error = find_config_error(err)
        if config_error is None:
            raise
        _remove_empty_run_folder()
        raise SystemExit(f"error: {config_error}") from None


def _remove_empty_run_folder() -> None:
    """Remove this run's version folder if nothing was written into it."""
    folder = os.environ.get(RUN_FOLDER_ENV)
    if folder and _is_rank_zero():
        with contextlib.suppress(OSError):  # not empty, or already gone: keep it
            Path(folder).rmdir()
