"""The command line: a LightningCLI with this project's defaults.

* model and data are chosen by class (``--model InterventionModule --data IOIDataModule`` or
  ``class_path`` in a YAML config; subclass mode);
* ``data.backbone`` is linked to ``model.backbone`` so the tokenizer always matches the model;
* the default logger is Weights & Biases in offline mode, writing into the run folder
  (``trainer.default_root_dir``); ``wandb sync <run>/wandb/offline-run-*`` uploads it later;
* the last checkpoint is kept in ``<run>/checkpoints/last.ckpt`` (``--ckpt_path last`` resumes)
  and the resolved config is saved beside it as ``<run>/config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class InterventionCLI(LightningCLI):
    """LightningCLI with the project's links and defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        run = trainer.get("default_root_dir") or "runs/default"
        trainer["default_root_dir"] = run
        logger = trainer.get("logger")
        if isinstance(logger, dict) or hasattr(logger, "get"):
            init = logger.get("init_args")
            if init is not None and "WandbLogger" in str(logger.get("class_path", "")):
                if init.get("save_dir") in (None, "", "."):
                    init["save_dir"] = run
                if not init.get("name"):
                    init["name"] = Path(run).name

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        run = Path(self.trainer.default_root_dir)
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run / "checkpoints")


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
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> InterventionCLI:
    """Run the CLI (``train.py`` calls this)."""
    return build_cli(args)
