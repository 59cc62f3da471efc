"""EAP-IG: edge attribution patching with integrated gradients.

:mod:`.eap_ig` is the algorithm (node outputs, input gradients through the one hook system,
edge scores); :mod:`.graph` is the :class:`AttributionGraph` it returns and its file format.
"""

from interventions.methods.eap.eap_ig import eap_ig, logit_difference
from interventions.methods.eap.graph import AttributionGraph, Edge

__all__ = ["AttributionGraph", "Edge", "eap_ig", "logit_difference"]
