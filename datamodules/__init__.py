"""LightningDataModules: contrastive one-token-answer tasks (IOI, CCC, MWE behaviours) and
multiple-choice commonsense tasks (BoolQ, COPA, WinoGrande)."""

from datamodules.base import ContrastiveCollator, ContrastiveDataModule, ContrastiveExample
from datamodules.ccc import CCCDataModule
from datamodules.commonsense import ChoiceItem, CommonsenseDataModule
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
    "ChoiceItem",
    "CommonsenseDataModule",
    "ContrastiveCollator",
    "ContrastiveDataModule",
    "ContrastiveExample",
    "IOIDataModule",
    "MWEDataModule",
    "available_behaviors",
    "resolve_behavior",
]
