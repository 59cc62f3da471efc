"""learned-interventions: train, compute, export and apply small interventions on a frozen
Hugging Face causal LM.

The public API, importable from the package itself::

    from interventions import load_backbone, attach, load_intervention

    model, tokenizer = load_backbone("smollm2-135m-instruct")
    edit = load_intervention("runs/ioi/activscalar/latest/intervention")
    with attach(model, edit, beta=1.0):
        out = model.generate(**tokenizer("Then, John and Mary ...", return_tensors="pt"))

The layers of the package, each importing only from the ones before it:
``interventions.core`` (model access: backbone, sites, hooks, batch contracts) ->
``interventions.edits`` / ``interventions.evaluation`` / ``interventions.reporting``
(building blocks) -> ``interventions.methods.<method>`` (one package per paper) ->
``interventions.experiments`` (drivers; nothing imports them).  Names are loaded on first use,
so ``import interventions`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # model access
    "DEFAULT_BACKBONE": "interventions.core.backbone",
    "load_backbone": "interventions.core.backbone",
    "load_tokenizer": "interventions.core.backbone",
    "model_dims": "interventions.core.sites",
    "attach": "interventions.core.hooks",
    "record": "interventions.core.hooks",
    "last_token_logits": "interventions.core.hooks",
    "position_ids": "interventions.core.hooks",
    "ContrastiveExample": "interventions.core.batch",
    "ContrastiveCollator": "interventions.core.batch",
    # edits and their files
    "PointEdit": "interventions.edits.point",
    "ActivScalar": "interventions.edits.point",
    "SteerVec": "interventions.edits.point",
    "DynScalar": "interventions.edits.point",
    "AUScale": "interventions.edits.point",
    "AUShift": "interventions.edits.point",
    "build_edit": "interventions.edits.point",
    "save_intervention": "interventions.edits.artifact",
    "load_intervention": "interventions.edits.artifact",
    "read_intervention_config": "interventions.edits.artifact",
    # evaluation and run artefacts
    "steered_continuations": "interventions.evaluation.generation",
    "RunArtifacts": "interventions.reporting.artifacts",
    "ComputedModule": "interventions.reporting.computed",
    # methods: the LightningModules a config names, and each method's main functions
    "InterventionModule": "interventions.methods.scaling.module",
    "CAAModule": "interventions.methods.caa.module",
    "caa_vectors": "interventions.methods.caa.vectors",
    "W2SModule": "interventions.methods.w2s.module",
    "load_predictor": "interventions.methods.w2s.module",
    "build_w2s_data": "interventions.methods.w2s.pipeline",
    "AUSteerModule": "interventions.methods.austeer.module",
    "AttributionScalarModule": "interventions.methods.attribution.module",
    "A2AModule": "interventions.methods.a2a.module",
    "AttributionGraph": "interventions.methods.eap.graph",
    "eap_ig": "interventions.methods.eap.eap_ig",
    # data modules (package datamodules)
    "IOIDataModule": "datamodules.ioi",
    "CCCDataModule": "datamodules.ccc",
    "MWEDataModule": "datamodules.mwe",
    "CommonsenseDataModule": "datamodules.commonsense",
    "W2SDataModule": "datamodules.w2s",
    "ContrastiveDataModule": "datamodules.base",
    # your own data from a file
    "ContrastiveFileDataModule": "datamodules.files",
    "BehaviorFileDataModule": "datamodules.files",
    "W2SFileDataModule": "datamodules.files",
    "MultipleChoiceFileDataModule": "datamodules.files",
}

__all__ = [
    "A2AModule",
    "AUScale",
    "AUShift",
    "AUSteerModule",
    "ActivScalar",
    "AttributionGraph",
    "AttributionScalarModule",
    "BehaviorFileDataModule",
    "CAAModule",
    "CCCDataModule",
    "CommonsenseDataModule",
    "ComputedModule",
    "ContrastiveCollator",
    "ContrastiveDataModule",
    "ContrastiveExample",
    "ContrastiveFileDataModule",
    "DEFAULT_BACKBONE",
    "DynScalar",
    "IOIDataModule",
    "InterventionModule",
    "MWEDataModule",
    "MultipleChoiceFileDataModule",
    "PointEdit",
    "RunArtifacts",
    "SteerVec",
    "W2SDataModule",
    "W2SFileDataModule",
    "W2SModule",
    "attach",
    "build_edit",
    "build_w2s_data",
    "caa_vectors",
    "eap_ig",
    "last_token_logits",
    "load_backbone",
    "load_intervention",
    "load_predictor",
    "load_tokenizer",
    "model_dims",
    "position_ids",
    "read_intervention_config",
    "record",
    "save_intervention",
    "steered_continuations",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interventions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from datamodules.base import ContrastiveDataModule
    from datamodules.ccc import CCCDataModule
    from datamodules.commonsense import CommonsenseDataModule
    from datamodules.files import (
        BehaviorFileDataModule,
        ContrastiveFileDataModule,
        MultipleChoiceFileDataModule,
        W2SFileDataModule,
    )
    from datamodules.ioi import IOIDataModule
    from datamodules.mwe import MWEDataModule
    from datamodules.w2s import W2SDataModule
    from interventions.core.backbone import DEFAULT_BACKBONE, load_backbone, load_tokenizer
    from interventions.core.batch import ContrastiveCollator, ContrastiveExample
    from interventions.core.hooks import attach, last_token_logits, position_ids, record
    from interventions.core.sites import model_dims
    from interventions.edits.artifact import (
        load_intervention,
        read_intervention_config,
        save_intervention,
    )
    from interventions.edits.point import (
        ActivScalar,
        AUScale,
        AUShift,
        DynScalar,
        PointEdit,
        SteerVec,
        build_edit,
    )
    from interventions.evaluation.generation import steered_continuations
    from interventions.methods.a2a.module import A2AModule
    from interventions.methods.attribution.module import AttributionScalarModule
    from interventions.methods.austeer.module import AUSteerModule
    from interventions.methods.caa.module import CAAModule
    from interventions.methods.caa.vectors import caa_vectors
    from interventions.methods.eap.eap_ig import eap_ig
    from interventions.methods.eap.graph import AttributionGraph
    from interventions.methods.scaling.module import InterventionModule
    from interventions.methods.w2s.module import W2SModule, load_predictor
    from interventions.methods.w2s.pipeline import build_w2s_data
    from interventions.reporting.artifacts import RunArtifacts
    from interventions.reporting.computed import ComputedModule
