"""The W2S LightningModule: :class:`W2SModule` (the data pipeline at setup, the layer predictor
trained with cross-entropy, the end of the run), and its export reader :func:`load_predictor`.

The pipeline (vectors, sweeps, labels, embeddings) is :func:`.pipeline.build_w2s_data`; the
labels, encoders and predictor network are in :mod:`.labels`, :mod:`.encoders`,
:mod:`.predictor`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from interventions.core.backbone import DEFAULT_BACKBONE, load_backbone_from
from interventions.core.dispatch import DeviceMap, MaxMemory
from interventions.edits.artifact import (
    artifact_folder,
    read_artifact_config,
    read_artifact_tensors,
    write_artifact,
)
from interventions.evaluation.steerability import SteerabilityMetrics
from interventions.evaluation.sweep import (
    DEFAULT_MULTIPLIERS,
)
from interventions.methods.caa.vectors import steering_edit
from interventions.methods.w2s.labels import IGNORE_INDEX
from interventions.methods.w2s.pipeline import W2SData, W2SOptions, build_w2s_data
from interventions.methods.w2s.predictor import LayerPredictor
from interventions.reporting import plots
from interventions.reporting.artifacts import RunArtifacts
from interventions.reporting.run_folder import run_folder

ARTIFACT_NAME = "w2s_predictor"  # w2s_predictor.safetensors + w2s_predictor.json
WEIGHTS_NAME = f"{ARTIFACT_NAME}.safetensors"
CONFIG_NAME = f"{ARTIFACT_NAME}.json"
_TYPE = "w2s_predictor"


class W2SModule(L.LightningModule):
    """Trains and evaluates the W2S layer predictor on prompt embeddings.

    With an item data module (:class:`datamodules.w2s.W2SDataModule`: ``items``, ``collator``),
    ``setup`` loads the backbone on this module's device and runs the data pipeline
    (:func:`~interventions.methods.w2s.pipeline.build_w2s_data`: steering vectors, the cached
    layer sweep, labels, prompt embeddings) once; the result is :attr:`data` and batches are item
    indices (``{"index": [B]}``) into its tables.  A data module may instead serve the rows
    themselves (``embedding``, ``label``, ``steerability``) and give ``embedding_dim``,
    ``label_layers``, ``fixed_layer`` and ``test_names`` as attributes.  The classes, the
    embedding size and the fixed layer are stored in the hyperparameters, so a checkpoint reloads
    without either.  Passing ``in_dim`` and ``label_layers`` builds the predictor at once instead.

    Rows: ``embedding [B, D]`` float, ``label [B]`` long class index (``-100`` = ignored by loss
    and accuracy), ``steerability [B, L]`` per-layer slope for all ``L`` layers.

    Logged: ``train/loss``, ``train/accuracy``; ``val/loss``, ``val/accuracy``,
    ``val/steerability``, ``val/prop_steerable`` (steerability at the predicted layer); for each
    test set ``<name>``: ``test/<name>/{w2s,fixed,oracle}/{steerability,prop_steerable}``,
    ``test/<name>/w2s/accuracy`` and ``test/<name>/w2s/loss``.  The predicted layers of each test
    set are kept in :attr:`test_predictions` (``name -> [N]``).

    Args:
        backbone: the backbone the steerability is measured on (loaded at setup only when the
            pipeline runs; linked to the data module's ``backbone``).
        hidden: width of the predictor's hidden layers.
        depth: number of hidden layers (0 = linear classifier).
        dropout: dropout after each hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (the L2 regularisation of paper Eq. 6).
        in_dim: embedding size; ``None``: from the data.
        label_layers: the layer of each class; ``None``: from the data.
        fixed_layer: the fixed-layer baseline; ``None``: from the data (if any; without one the
            ``fixed`` metrics are skipped).
        steering: steering vectors of the pipeline: ``"caa"`` or ``"l2s"``.
        multipliers: steering multipliers of the sweep.
        top_k: K of the frequency-aware label smoothing (1 = plain best layer).
        encoder: prompt encoder, ``"minilm"`` (default), ``"lm_internal"`` or a local folder of a
            sentence encoder.
        pooling: ``lm_internal`` pooling: ``"last"`` or ``"mean"`` token.
        ood_layers: ``"labels"`` sweeps OOD test sets only at the layers a predictor can choose
            (best on some training example) plus the fixed layer; ``"all"`` sweeps every layer.
        l2s_context_layers: candidate context layers of L2S (default: every third layer).
        l2s_steps: Adam steps of each L2S network.
        dtype: backbone dtype.
        device_map: Accelerate device map splitting the backbone over GPUs, ``cpu`` and ``disk``
            (``auto``, ``sequential`` or module -> device); ``None``: all on the trainer's device.
        max_memory: memory per device for ``device_map``, e.g. ``{0: 20GiB, cpu: 60GiB}``.
        offload_folder: folder for the backbone weights ``device_map`` puts on ``disk``.
        sweep_cache_dir: root of the sweep cache (default: the project cache folder).
        sweep_chunk_size: examples per cache chunk.
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
        steering: Literal["caa", "l2s"] = "caa",
        multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
        top_k: int = 1,
        encoder: str = "minilm",
        pooling: Literal["last", "mean"] = "last",
        ood_layers: Literal["labels", "all"] = "labels",
        l2s_context_layers: list[int] | None = None,
        l2s_steps: int = 300,
        dtype: str = "float32",
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: str | None = None,
        sweep_cache_dir: str | None = None,
        sweep_chunk_size: int = 16,
    ) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr}, {weight_decay}.")
        if steering not in ("caa", "l2s"):
            raise ValueError(f"steering must be 'caa' or 'l2s', got {steering!r}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        if ood_layers not in ("labels", "all"):
            raise ValueError(f"ood_layers must be 'labels' or 'all', got {ood_layers!r}.")
        self.save_hyperparameters()
        self.predictor: LayerPredictor | None = None
        self.data: W2SData | None = None
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
                "them from the data at setup."
            )

    def options(self) -> W2SOptions:
        """The pipeline settings of this module's hyperparameters."""
        h = self.hparams
        context = h.l2s_context_layers
        return W2SOptions(
            steering=h.steering,
            multipliers=tuple(float(m) for m in h.multipliers),
            top_k=h.top_k,
            encoder=h.encoder,
            pooling=h.pooling,
            ood_layers=h.ood_layers,
            l2s_context_layers=tuple(context) if context is not None else None,
            l2s_steps=h.l2s_steps,
            seed=int(getattr(self.trainer.datamodule, "seed", 0)) if self._trainer else 0,
            sweep_cache_dir=h.sweep_cache_dir,
            sweep_chunk_size=h.sweep_chunk_size,
        )

    def build_data(self, datamodule: Any) -> W2SData:
        """Run the pipeline on an item data module's items, with the backbone on this module's
        device (loaded here, dropped afterwards)."""
        # setup runs before Lightning moves the module: use the device the trainer will use
        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else self.device
        model, _ = load_backbone_from(self.hparams, device=device)  # a device_map places it
        tags = datamodule.cache_tags() if hasattr(datamodule, "cache_tags") else {}
        return build_w2s_data(
            model, datamodule.items, datamodule.collator, self.hparams.backbone,
            self.options(), tags,
        )  # fmt: skip

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
        run_folder(self.trainer)  # chosen once, on every rank, before any file is written
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.data is None and hasattr(datamodule, "items") and hasattr(datamodule, "collator"):
            self.data = self.build_data(datamodule)
        source = self.data if self.data is not None else datamodule
        names = getattr(source, "test_names", None)
        if names is not None:
            self.test_names = [str(n) for n in names]
        if self.hparams.fixed_layer is None and getattr(source, "fixed_layer", None) is not None:
            self.hparams["fixed_layer"] = int(source.fixed_layer)
        dm_dim = getattr(source, "embedding_dim", None)
        dm_layers = getattr(source, "label_layers", None)
        if self.predictor is not None:
            if dm_dim is not None and int(dm_dim) != self.hparams.in_dim:
                raise ValueError(
                    f"The data's embeddings have {dm_dim} dims but this predictor was "
                    f"built for {self.hparams.in_dim}; use the same prompt encoder."
                )
            if dm_layers is not None and [int(x) for x in dm_layers] != self.hparams.label_layers:
                raise ValueError(
                    f"The data's label layers {list(dm_layers)} differ from the "
                    f"predictor's {self.hparams.label_layers}: class indices would not match."
                )
            return
        if dm_dim is None or dm_layers is None:
            raise ValueError(
                "W2SModule needs the embedding size and the label layers: use an item data module "
                "(datamodules.W2SDataModule), a data module with `embedding_dim` and "
                "`label_layers` attributes, or pass in_dim=... and label_layers=[...]."
            )
        self._build_predictor(int(dm_dim), dm_layers)

    def rows(self, batch: dict[str, Tensor], table: str) -> dict[str, Tensor]:
        """A batch as rows: item indices are looked up in ``data.tables[table]``; a batch that
        already holds the rows is returned as is."""
        if "index" not in batch:
            return batch
        if self.data is None:
            raise RuntimeError(
                "This batch holds item indices but the W2S data has not been built: run "
                "fit / validate / test with an item data module (datamodules.W2SDataModule)."
            )
        index = batch["index"].cpu()
        return {k: v[index].to(self.device) for k, v in self.data.tables[table].items()}

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
        logits, loss, correct = self._step(self.rows(batch, "train"))
        n = int(loss.numel())
        if n == 0:  # every row ignored: a zero loss that still touches the graph
            return logits.sum() * 0.0
        self.log("train/loss", loss.mean(), prog_bar=True, batch_size=n)
        self.log("train/accuracy", correct.mean(), prog_bar=True, batch_size=n)
        return loss.mean()

    # ------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        batch = self.rows(batch, "val")
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
        batch = self.rows(batch, f"test/{name}")
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
        if self.data is not None:  # every rank (matched collectives); rank zero writes
            finish_w2s_run(self, self.data, RunArtifacts.of(self))

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
        h = self.hparams
        meta: dict[str, Any] = dict(
            config={name: h[name] for name in _init_arg_names()},
            num_classes=len(h.label_layers),
            encoder=encoder,
        )
        return write_artifact(folder, ARTIFACT_NAME, _TYPE, predictor.state_dict(), meta, extra)


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


def finish_w2s_run(module: W2SModule, data: W2SData, art: RunArtifacts) -> dict[str, Any]:
    """Evaluate every test set, write ``metrics.json``, export the predictor (and the CAA
    vectors), draw the plots and log them to W&B."""
    h = module.hparams
    fixed = data.fixed_layer
    results = {
        name: evaluate_steering(module, data.tables[f"test/{name}"], fixed)
        for name in data.test_names
    }
    results["val"] = evaluate_steering(module, data.tables["val"], fixed)
    datamodule = getattr(module.trainer, "datamodule", None)
    metrics = {
        "summary": data.summary,
        "results": results,
        "data": dict(getattr(datamodule, "hparams", {})),
        "pipeline": {k: h[k] for k in _PIPELINE_ARGS},
    }
    scalars = {
        f"final/{name}/{method}/{k}": v
        for name in data.test_names
        for method in ("w2s", "fixed", "oracle")
        for k, v in results[name][method].items()
    }
    art.write_metrics(metrics, scalars)
    encoder = {"encoder": h.encoder, "pooling": h.pooling, "backbone": h.backbone}
    behavior = data.summary.get("behavior")
    extra = {"behavior": behavior, "steering": h.steering, "results": results}
    if art.writer:
        folder = module.export(art.path(ARTIFACT_NAME), encoder=encoder, extra=extra)
        art.add_export(folder, "w2s_predictor")
    if data.vectors is not None:
        edit = steering_edit(data.dims, data.vectors)
        art.export(edit, h.backbone, extra={"fixed_layer": fixed})
    title = f"{behavior} ({h.steering.upper()})"
    test = data.tables["test/base"]["steerability"]
    train_layers = torch.tensor(data.label_layers)[data.tables["train"]["label"]]
    art.plot(
        "steerability_per_layer",
        plots.steerability_per_layer(
            {
                "train": torch.tensor(data.summary["train_steerability_per_layer"]),
                "test": test.nanmean(0),
            },
            fixed,
            title=f"Mean steerability per layer: {title}",
            label=h.steering.upper(),
        ),
    )
    art.plot(
        "best_layers",
        plots.best_layer_histogram(
            train_layers,
            test.shape[1],
            fixed_layer=fixed,
            title=f"Per-example label layers (train, top_k={h.top_k}): {title}",
        ),
    )
    art.plot(
        "fixed_vs_w2s",
        plots.fixed_vs_w2s(
            {
                name: {
                    "fixed": results[name]["fixed"]["steerability"],
                    "W2S": results[name]["w2s"]["steerability"],
                    "oracle": results[name]["oracle"]["steerability"],
                }
                for name in data.test_names
            },
            title=f"Test steerability, fixed layer vs W2S: {title}",
        ),
    )
    art.publish()
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


_PIPELINE_ARGS = (
    "steering", "multipliers", "top_k", "encoder", "pooling", "ood_layers",
    "l2s_context_layers", "l2s_steps", "dtype",
)  # fmt: skip


def _init_arg_names() -> list[str]:
    return [p for p in inspect.signature(W2SModule.__init__).parameters if p != "self"]


def read_predictor_config(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an exported W2S predictor (its folder or either of its files)."""
    return read_artifact_config(
        path, ARTIFACT_NAME, "W2S predictor", "written by W2SModule.export", kind=_TYPE
    )


def load_predictor(path: str | Path) -> W2SModule:
    """Rebuild an exported W2S predictor (eval mode, CPU); no pickle is read.

    The export's ``encoder`` entry is available as ``module.encoder_config``.  Unknown
    configuration keys (from newer versions) are ignored.
    """
    meta = read_predictor_config(path)
    folder = artifact_folder(path, ARTIFACT_NAME, "W2S predictor")
    config = meta.get("config")
    if (
        not isinstance(config, dict)
        or config.get("in_dim") is None
        or not config.get("label_layers")
    ):
        raise ValueError(f"{folder / CONFIG_NAME} lacks in_dim / label_layers; it is corrupt.")
    known = set(_init_arg_names())
    module = W2SModule(**{k: v for k, v in config.items() if k in known})
    tensors = read_artifact_tensors(folder, ARTIFACT_NAME, "W2S predictor")
    weights = folder / WEIGHTS_NAME
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
