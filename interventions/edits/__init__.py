"""Intervention parameters: the edit modules (:mod:`.point`) and their versioned on-disk artefact
(:mod:`.artifact`: safetensors + JSON, no pickle)."""

from interventions.edits.artifact import (
    NonFiniteEditError,
    load_intervention,
    read_intervention_config,
    save_intervention,
)
from interventions.edits.point import (
    EDITS,
    ActivScalar,
    AUEditState,
    AUScale,
    AUShift,
    DynScalar,
    EditState,
    PointEdit,
    PositionSpec,
    SteerVec,
    build_edit,
)

__all__ = [
    "EDITS",
    "AUEditState",
    "AUScale",
    "AUShift",
    "ActivScalar",
    "DynScalar",
    "EditState",
    "NonFiniteEditError",
    "PointEdit",
    "PositionSpec",
    "SteerVec",
    "build_edit",
    "load_intervention",
    "read_intervention_config",
    "save_intervention",
]
