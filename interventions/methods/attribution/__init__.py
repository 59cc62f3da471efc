"""Attribution scores as activation scalars (activation scaling, Stoehr et al., Sec. 6.1, Fig. 9).

:mod:`.scores` computes ActPatch / AttrPatch / DLA scores per (layer, site, position);
:mod:`.scalars` accumulates them and turns them into an ActivScalar; :mod:`.beta` searches its global beta; :mod:`.module` is
:class:`AttributionScalarModule`, which runs both from ``train.py fit``.
"""

from interventions.methods.attribution.beta import (
    DEFAULT_BETA_GRID,
    BetaSweep,
    check_beta_grid,
    choose_beta,
    evaluate_edit,
    mean_flip_beta,
    sweep_betas,
)
from interventions.methods.attribution.module import AttributionScalarModule
from interventions.methods.attribution.scalars import (
    ScoreAccumulator,
    edit_values,
    scalar_edit,
    scores_to_alpha,
)
from interventions.methods.attribution.scores import (
    ALPHA_SIGN,
    METHODS,
    attribution_scores,
    final_norm,
    probe_norm,
)

__all__ = [
    "ALPHA_SIGN",
    "DEFAULT_BETA_GRID",
    "METHODS",
    "AttributionScalarModule",
    "BetaSweep",
    "ScoreAccumulator",
    "attribution_scores",
    "check_beta_grid",
    "choose_beta",
    "edit_values",
    "evaluate_edit",
    "final_norm",
    "mean_flip_beta",
    "probe_norm",
    "scalar_edit",
    "scores_to_alpha",
    "sweep_betas",
]
