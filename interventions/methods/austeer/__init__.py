"""AUSteer: steer a few atomic units chosen by activation momentum.

:mod:`.units` is the algorithm (statistics, selection, steering values, the edit);
:mod:`.module` is :class:`AUSteerModule`, the search and the run's end.
"""

from interventions.methods.austeer.module import AUSteerModule, unit_ranking
from interventions.methods.austeer.units import (
    STAT_SITES,
    ZERO_TOL,
    MomentumStats,
    au_activations,
    austeer_gammas,
    build_edit,
    top_k_units,
)

__all__ = [
    "STAT_SITES",
    "ZERO_TOL",
    "AUSteerModule",
    "MomentumStats",
    "au_activations",
    "austeer_gammas",
    "build_edit",
    "top_k_units",
    "unit_ranking",
]
