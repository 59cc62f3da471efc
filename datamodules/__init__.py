"""LightningDataModules of contrastive tasks: a prompt, a correct and a wrong one-token answer."""

from datamodules.base import ContrastiveCollator, ContrastiveDataModule, ContrastiveExample
from datamodules.ccc import CCCDataModule
from datamodules.ioi import IOIDataModule
from datamodules.mwe import (
    BASE_SYSTEM_MESSAGE,
    BEHAVIOR_DESCRIPTIONS,
    VARIANTS,
    W2S_BEHAVIORS,
    MWEDataModule,
    available_behaviors,
    resolve_behavior,
)

__all__ = [
    "BASE_SYSTEM_MESSAGE",
    "BEHAVIOR_DESCRIPTIONS",
    "VARIANTS",
    "W2S_BEHAVIORS",
    "CCCDataModule",
    "ContrastiveCollator",
    "ContrastiveDataModule",
    "ContrastiveExample",
    "IOIDataModule",
    "MWEDataModule",
    "available_behaviors",
    "resolve_behavior",
]
