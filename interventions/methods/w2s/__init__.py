"""W2S, "Where to Steer": predict, per prompt, the layer at which to add a steering vector.

A layer sweep (:mod:`interventions.evaluation.sweep`) gives every example a steerability per layer
(``steerability [N, L]``, the slope of propensity against the steering multiplier; larger is
better).  W2S turns it into a classification problem (paper Sec. 5):

1. **labels**: the best layer of each example, optionally relaxed by Top-K frequency-aware label
   smoothing (:func:`.labels.frequency_smoothed_labels`, paper App. E, Eq. 7);
2. **label space**: only layers that are the best for at least one training example become
   classes (:func:`.labels.label_space`, :func:`.labels.encode_labels`); val / test examples whose best layer is
   outside it get the ignore index ``-100`` for the loss and accuracy but still count in every
   steerability metric;
3. **prompt embedding**: a frozen prompt encoder (:func:`.encoders.encode_prompts`: all-MiniLM-L6-v2 or the
   backbone's own first layer), L2-normalised as in the paper (App. D.4);
4. **layer predictor**: a shallow MLP trained with cross-entropy and AdamW weight decay
   (:class:`.predictor.LayerPredictor`, :class:`.module.W2SModule`).

At test time the steerability at the predicted layer is compared with the fixed-layer baseline
(the layer with the best mean steerability on the training split) and the per-example oracle.
The predictor is exported as ``w2s_predictor.safetensors`` + ``w2s_predictor.json``
(:meth:`.module.W2SModule.export`, :func:`.module.load_predictor`); no pickle is involved.

The data side (CAA / L2S vectors, the layer sweep, labels, embeddings) is the plain function
:func:`.pipeline.build_w2s_data`, which :class:`.module.W2SModule` runs at setup on the items of
:class:`datamodules.w2s.W2SDataModule`.
"""

from interventions.methods.w2s.encoders import clear_encoder_cache, encode_prompts, minilm_folder
from interventions.methods.w2s.labels import (
    IGNORE_INDEX,
    encode_labels,
    frequency_smoothed_labels,
    label_space,
)
from interventions.methods.w2s.module import W2SModule, load_predictor, read_predictor_config
from interventions.methods.w2s.pipeline import W2SData, W2SOptions, build_w2s_data
from interventions.methods.w2s.predictor import LayerPredictor

__all__ = [
    "IGNORE_INDEX",
    "LayerPredictor",
    "W2SData",
    "W2SModule",
    "W2SOptions",
    "build_w2s_data",
    "clear_encoder_cache",
    "encode_labels",
    "encode_prompts",
    "frequency_smoothed_labels",
    "label_space",
    "load_predictor",
    "minilm_folder",
    "read_predictor_config",
]
