"""LightningDataModules of contrastive tasks: a prompt, a correct and a wrong one-token answer."""

from datamodules.base import ContrastiveCollator, ContrastiveDataModule, ContrastiveExample
from datamodules.ccc import CCCDataModule
from datamodules.ioi import IOIDataModule

__all__ = [
    "CCCDataModule",
    "ContrastiveCollator",
    "ContrastiveDataModule",
    "ContrastiveExample",
    "IOIDataModule",
]
