"""Contrastive activation addition: mean-difference steering vectors (:mod:`.vectors`) and the
layer-sweep experiment (:mod:`.module`)."""

from interventions.methods.caa.module import CAAModule, sweep_report
from interventions.methods.caa.vectors import DiffAccumulator, caa_vectors, steering_edit

__all__ = ["CAAModule", "DiffAccumulator", "caa_vectors", "steering_edit", "sweep_report"]
