"""The frozen backbone of a LightningModule: held outside the module tree, moved with it.

:class:`FrozenBackbone` is the mixin of every module that uses a backbone (the activation-scaling
module and the computed modules): the model is never in a checkpoint or in train mode, the
module's own parameters stay float32 master weights under half-precision casts, and the work at
the end of ``fit`` runs on the trainer's device (:meth:`FrozenBackbone.on_fit_end`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from interventions.core.backbone import load_backbone_from
from interventions.core.dispatch import check_precision, check_strategy, is_dispatched

__all__ = ["FrozenBackbone"]


class FrozenBackbone:
    """Mixin for a LightningModule that uses a frozen backbone held outside its module tree.

    :meth:`hold_backbone` stores the model (and tokenizer) in the instance ``__dict__``: they are
    never in ``state_dict`` or a checkpoint and never put in train mode, yet ``module.to(...)``
    moves the backbone along (``_apply`` forwards to it), unless a device map placed it
    (:func:`~interventions.core.dispatch.is_dispatched`).  Put it before ``LightningModule`` in
    the bases.  :meth:`load_and_hold` loads the backbone its hyperparameters name.  Sharding
    strategies (FSDP, DeepSpeed) are refused at ``configure_model``
    (:func:`~interventions.core.dispatch.check_strategy`), and a bfloat16 precision on a CPU
    that emulates it is warned about (:func:`~interventions.core.dispatch.check_precision`).

    The module's *own* floating parameters (the edit's: the master weights) stay float32 when
    the module is cast to half precision (``module.half()``, Lightning's ``precision="16-true"``
    / ``"bf16-true"``), so small values and Adam's moments keep their precision; only the
    backbone takes the lower dtype.  A cast to float64 is kept (gradient checks, ``64-true``).
    The edits compute in float32 and return the activations' dtype.
    """

    def hold_backbone(self, model: Any, tokenizer: Any = None) -> None:
        self.__dict__["model"] = model
        self.__dict__["tokenizer"] = tokenizer

    def load_and_hold(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load the backbone of this module's hyperparameters (:func:`load_backbone_from`: the
        name, dtype, device map, offload and checkpointing options) and hold it."""
        model, tokenizer = load_backbone_from(self.hparams)  # type: ignore[attr-defined]
        self.hold_backbone(model, tokenizer)
        return model, tokenizer

    def configure_model(self) -> None:
        """Lightning's hook before the strategy wraps the module: refuse sharding strategies
        (:func:`~interventions.core.dispatch.check_strategy`) and warn about an emulated
        bfloat16 precision (:func:`~interventions.core.dispatch.check_precision`)."""
        trainer = getattr(self, "_trainer", None)  # None: e.g. load_from_checkpoint
        if trainer is not None:
            check_strategy(trainer.strategy)
            check_precision(trainer)
        super().configure_model()  # type: ignore[misc]

    def on_fit_end(self) -> None:
        """Run :meth:`end_of_fit` (the evaluation, searches, samples and exports of a fit) on the
        device the trainer used.

        Lightning's teardown moves the module to the CPU *before* ``on_fit_end``, so work done
        there would run the backbone on the CPU (and meet tensors the fit left on the GPU).  The
        module goes back to the trainer's device for :meth:`end_of_fit` and returns to the CPU
        afterwards, as teardown left it."""
        with self.on_trainer_device():
            self.end_of_fit()

    def end_of_fit(self) -> None:
        """The work at the end of ``fit``, on the trainer's device (override; default: none)."""

    @contextlib.contextmanager
    def on_trainer_device(self) -> Iterator[None]:
        """Inside: the module (and a backbone it holds without a device map) is on the device the
        trainer ran on; afterwards it is back on the CPU.  A no-op without a trainer or on a CPU
        trainer."""
        trainer = getattr(self, "_trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or device.type == "cpu":
            yield
            return
        self.to(device)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            self.cpu()  # type: ignore[attr-defined]
            if device.type == "cuda":
                torch.cuda.empty_cache()  # as Lightning's teardown does

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        _keep_master_weights_float32(self)  # own trainable values never drop below float32
        if not is_dispatched(self.__dict__["model"]):  # a device map keeps it where it put it
            self.__dict__["model"]._apply(fn)  # keep the backbone on the module's device / dtype
        return self


_BELOW_FLOAT32 = (torch.float16, torch.bfloat16)


def _keep_master_weights_float32(module: torch.nn.Module) -> None:
    """Cast ``module``'s own half-precision parameters (and their gradients) back to float32."""
    for param in module.parameters():
        if param.dtype in _BELOW_FLOAT32:
            param.data = param.data.float()
            if param.grad is not None:
                param.grad = param.grad.float()
