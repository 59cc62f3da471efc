"""Models bigger than one device: Accelerate's big-model dispatch behind the backbone.

:func:`~interventions.core.backbone.load_backbone` passes ``device_map`` / ``max_memory`` /
``offload_folder`` to ``from_pretrained`` (:func:`placement_kwargs`): the frozen weights are
split over GPUs, CPU memory and disk.  A dispatched model stays where the map put it
(:func:`is_dispatched`: ``FrozenBackbone`` does not move it with the module), its inputs go to
the device its embedding runs on (:func:`input_device`; the logits come back there), the hooks
edit each activation where it lives, and code that reads weights outside a forward call reads
them with :func:`loaded_tensor`.

Sharding strategies (FSDP, DeepSpeed) are refused (:func:`check_strategy`): the backbone is held
outside the module tree, so they would not see it, and a few thousand trainable values need no
sharded gradients or optimiser state; ``device_map`` splits the frozen weights instead.

A bfloat16 precision on a CPU without native bfloat16 instructions gets a warning
(:func:`check_precision`): there the matrix products are emulated and slower than float32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DeviceMap",
    "MaxMemory",
    "check_precision",
    "check_strategy",
    "input_device",
    "is_dispatched",
    "loaded_tensor",
    "placement_kwargs",
]

DeviceMap = str | dict[str, int | str]
"""Accelerate device map: ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``,
one device (``"cpu"``, ``"cuda:1"``), or module name -> GPU index, ``"cpu"`` or ``"disk"``."""

MaxMemory = dict[int | str, int | str]
"""Memory an automatic device map may use per device, e.g. ``{0: "20GiB", "cpu": "60GiB"}``."""

_SHARDING_STRATEGIES = (
    "FSDPStrategy",
    "DeepSpeedStrategy",
    "ModelParallelStrategy",
    "XLAFSDPStrategy",
)


def is_dispatched(model: nn.Module) -> bool:
    """Whether Accelerate placed ``model`` (a device map or offload hooks): it must then not be
    moved as a whole."""
    return bool(getattr(model, "hf_device_map", None)) or hasattr(model, "_hf_hook")


def input_device(model: nn.Module) -> torch.device:
    """The device ``model``'s inputs go to: where its input embedding runs.

    For a model on one device, the device of its weights.  For a dispatched model, the execution
    device of the embedding (its weights may be offloaded to the meta device); send the input
    ids, masks and labels there, as the logits come back there.
    """
    try:
        embedding = model.get_input_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):  # not a transformers model
        embedding = None
    for module in (embedding, model):
        device = _execution_device(module)
        if device is not None:
            return device
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor) and weight.device.type != "meta":
            return weight.device
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def loaded_tensor(module: nn.Module, name: str = "weight") -> Tensor | None:
    """``module.<name>`` (a parameter or buffer, or ``None``) as a real tensor, also where
    Accelerate offloaded it to CPU memory or disk (it is then read onto the module's execution
    device; the module itself stays offloaded).  For code that reads weights outside a forward
    call (EAP-IG's head outputs, the unembedding of direct logit attribution)."""
    tensor = getattr(module, name)
    if tensor is None or tensor.device.type != "meta":
        return tensor
    from accelerate.utils import align_module_device  # lazy: only offloaded models get here

    with align_module_device(module):
        return getattr(module, name)


def check_strategy(strategy: Any) -> None:
    """Refuse the Lightning strategies that shard a model (FSDP, DeepSpeed, model parallel).

    Raises:
        ValueError: ``strategy`` is one of them.
    """
    names = {cls.__name__ for cls in type(strategy).__mro__}
    refused = [name for name in _SHARDING_STRATEGIES if name in names]
    if refused:
        raise ValueError(
            f"{refused[0]} is not supported: the frozen backbone is held outside the module tree, "
            "so a sharding strategy would neither see nor shard it, and the trainable edit (a few "
            "thousand values) needs no sharded gradients or optimiser state. For a backbone "
            "bigger than one device, split its frozen weights with --model.device_map auto "
            "(and --model.max_memory, --model.offload_folder); for data parallelism use "
            "--trainer.strategy ddp."
        )


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU multiplies bfloat16 natively (``avx512_bf16`` or ``amx_bf16``), from
    ``cpuinfo``'s flags; ``None`` where that file does not exist (not Linux: not known)."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    flags = {
        word for line in text.splitlines() if line.startswith("flags") for word in line.split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def check_precision(trainer: Any) -> None:
    """Warn when a bfloat16 precision runs on a CPU without native bfloat16: oneDNN emulates the
    bfloat16 matrix products there, usually slower than float32 (on a CPU with AVX512-BF16 they
    are about 4x faster, which is why the default IOI job uses ``bf16-mixed``)."""
    precision = str(getattr(trainer, "precision", ""))
    if "bf16" not in precision or trainer.strategy.root_device.type != "cpu":
        return
    if cpu_has_native_bf16() is False:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"precision={precision!r} on a CPU without native bfloat16 (no avx512_bf16 or "
            "amx_bf16 flag in /proc/cpuinfo): its bfloat16 matrix products are emulated and "
            "usually slower than float32. Pass --trainer.precision 32-true."
        )


def _execution_device(module: Any) -> torch.device | None:
    """The execution device of Accelerate's hook on ``module``, if it has one."""
    hook = getattr(module, "_hf_hook", None)
    for h in (hook, *getattr(hook, "hooks", ())):
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def _device_key(key: int | str) -> int | str:
    """A GPU index written as a string (``"0"``, from JSON) as the int Accelerate expects."""
    return int(key) if isinstance(key, str) and key.isdigit() else key


def placement_kwargs(
    device_map: DeviceMap | None,
    max_memory: MaxMemory | None,
    offload_folder: str | os.PathLike[str] | None,
    adapter: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments of the big-model options (``{}``: none)."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError(
                "max_memory and offload_folder only apply with a device_map: pass "
                "device_map='auto' (Accelerate fills the devices up to max_memory and puts what "
                "does not fit in offload_folder), or leave them unset."
            )
        return {}
    if adapter is not None:
        raise ValueError(
            "A PEFT adapter cannot be merged into a model loaded with a device_map. Merge it once "
            "(PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(folder)"
            ", with the tokenizer) and pass that folder as the backbone."
        )
    if isinstance(device_map, Mapping):
        device_map = {str(k): _device_key(v) for k, v in device_map.items()}
    placement: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        placement["max_memory"] = {_device_key(k): v for k, v in max_memory.items()}
    if offload_folder is not None:
        placement["offload_folder"] = os.path.expanduser(os.fspath(offload_folder))
    return placement
