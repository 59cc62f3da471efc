"""A2A (Attribution-to-Action): rank layers for steering from an EAP-IG attribution graph.

The pipeline of the A2A paper (Algorithm 1 and Section 3), on contrastive pairs
``(x+, x-, y+, y-)`` of equal token length (a datamodule whose batches carry
``corrupted_input_ids``):

1. **Attribution graph** (:func:`interventions.methods.eap.eap_ig.eap_ig`, ``steps = m``) on the training split;
   the per-example graphs are merged, and edge weights are accumulated as ``|Attr|`` example by
   example (Algorithm 1, line 3).
2. **Layer scores** (:func:`layer_scores`, Eq. 2): node ``In(v)`` / ``Out(v)`` = sum of ``|edge|``
   into / out of ``v``; per layer (its attention heads and its MLP) ``In``, ``Out``,
   ``Total = In + Out`` and ``Ratio = Out / (In + eps)``.  The input embedding and the logits
   belong to no layer.  Baselines: ``actdiff`` = the norm of the per-layer mean difference of
   ``resid_post`` at the last token between clean and corrupted prompts; ``random`` = a random
   permutation; ``mid`` = closeness to the middle layers (the paper's 18-20 of 32, i.e. centred
   at 60% depth).
3. **Steering** (Eq. 3): ``h_l <- h_l + lambda * v_l`` with the CAA vector ``v_l`` (mean answer-token
   difference of ``resid_post``, :mod:`interventions.methods.caa.module`) at the last prompt token of one layer.
   :func:`steering_grid` measures the **behaviour accuracy** -- the fraction of prompts on which
   the steered model prefers the target answer ``y+`` over ``y-`` -- for every layer and
   multiplier.  Steering is evaluated on the *corrupted* prompts: the steering vector has to undo
   the contrast (for the persona tasks: a prompt whose system message asks for the opposite
   trait).  Because only the last prompt token is edited, the rest of each prompt runs once and
   its key/value cache is shared by every (layer, multiplier) setting.
4. **Ground truth and metrics**: the grid search on the test split gives each layer a relevance
   (:func:`layer_relevance`: accuracy points gained over the unsteered model, as an integer);
   :func:`ndcg` (torchmetrics' retrieval nDCG) compares each method's ranking with it at 1, 5
   and 10.  For the accuracy table, a method steers its top-k layers one at a time
   (:func:`top_k_choice`), keeps the (layer, multiplier) with the best validation accuracy and
   reports its test accuracy; the grid search does the same over all layers.
5. **Cost** (:func:`cost_forward_equivalents`): the paper's accounting -- an attribution sample
   costs ``3 m`` forward-equivalents (m forwards + m backwards at about two forwards each), one
   steered evaluation prompt one forward -- so A2A costs ``3 m |D_attr| + k M |E|`` and the grid
   ``L M |E|`` for ``M`` multipliers and ``|E|`` selection prompts.  Seconds are measured too.

:class:`~.module.A2AModule` runs it all under the Lightning CLI (``configs/a2a/*.yaml``).
"""

from interventions.evaluation.ranking import (
    layer_relevance,
    mid_layer_scores,
    ndcg,
    random_scores,
    rank_layers,
    top_k_layers,
)
from interventions.methods.a2a.module import A2AModule
from interventions.methods.a2a.selection import (
    A2A_METHODS,
    BASELINES,
    GridResult,
    activation_difference,
    cost_forward_equivalents,
    layer_scores,
    method_costs,
    steering_grid,
    top_k_choice,
)

__all__ = [
    "A2A_METHODS",
    "BASELINES",
    "A2AModule",
    "GridResult",
    "activation_difference",
    "cost_forward_equivalents",
    "layer_relevance",
    "layer_scores",
    "mid_layer_scores",
    "method_costs",
    "ndcg",
    "random_scores",
    "rank_layers",
    "steering_grid",
    "top_k_choice",
    "top_k_layers",
]
