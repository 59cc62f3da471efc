"""Activation scaling (Stoehr et al.): ActivScalar, SteerVec and DynScalar trained on effectiveness +
faithfulness + minimality.

:mod:`.module` is :class:`InterventionModule` (the three-term trainer); :mod:`.report` is the
end of its run (metrics on every split, export, heatmap, logits-vs-beta curve, steered samples).
The loss terms and metrics are in :mod:`interventions.evaluation.objectives`.
"""

from interventions.methods.scaling.module import InterventionModule
from interventions.methods.scaling.report import finish_run, heatmap_values, write_samples

__all__ = ["InterventionModule", "finish_run", "heatmap_values", "write_samples"]
