"""LightningDataModules: contrastive one-token-answer tasks (IOI, CCC, MWE behaviours) and
multiple-choice commonsense tasks (BoolQ, COPA, WinoGrande), the W2S item sets of an MWE
behaviour, and the same three shapes read from your own file (:mod:`datamodules.files`).
Imports nothing of ``interventions`` but ``interventions.core``."""

from datamodules.base import ContrastiveCollator, ContrastiveDataModule, ContrastiveExample
from datamodules.ccc import CCCDataModule
from datamodules.commonsense import ChoiceItem, CommonsenseDataModule
from datamodules.files import (
    BehaviorFileDataModule,
    ContrastiveFileDataModule,
    MultipleChoiceFileDataModule,
    W2SFileDataModule,
)
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
from datamodules.w2s import W2SDataModule

__all__ = [
    "BASE_SYSTEM_MESSAGE",
    "BEHAVIOR_DESCRIPTIONS",
    "VARIANTS",
    "W2S_BEHAVIORS",
    "BehaviorFileDataModule",
    "CCCDataModule",
    "ChoiceItem",
    "CommonsenseDataModule",
    "ContrastiveCollator",
    "ContrastiveDataModule",
    "ContrastiveExample",
    "ContrastiveFileDataModule",
    "IOIDataModule",
    "MWEDataModule",
    "MultipleChoiceFileDataModule",
    "W2SDataModule",
    "W2SFileDataModule",
    "available_behaviors",
    "resolve_behavior",
]
