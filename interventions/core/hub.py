"""Checks on a backbone name that is neither an alias nor a local folder, made before anything
loads, so that a mistyped name fails at once instead of after a minute of Hub retries.

:func:`check_hub_name` lets a name through when transformers can load it: it is in the Hugging
Face cache, or it has the Hub's ``owner/name`` form and the Hub can be reached (a HEAD request to
the endpoint with a short timeout, through huggingface_hub's own session, so proxies and
``HF_ENDPOINT`` apply).  Otherwise it raises a one-line
:class:`~interventions.core.errors.BackboneNotFoundError` that suggests the nearest alias.
:func:`check_architecture` reads ``config.model_type`` of a folder or Hub model from its
``config.json`` alone (:func:`read_model_types`), so an unsupported architecture is refused
before the tokenizer or the weights load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Collection

from interventions.core.errors import BackboneNotFoundError, did_you_mean
from interventions.core.sites import check_model_type

__all__ = [
    "HUB_TIMEOUT_S",
    "check_architecture",
    "check_hub_name",
    "hub_offline",
    "hub_reachable",
    "read_model_types",
]

HUB_TIMEOUT_S = 3.0
"""Seconds the reachability check waits for the Hub before the name is refused."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint answers a HEAD request within ``timeout`` seconds (any HTTP
    status counts as reachable; no retries)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to connect means "not reachable"
        return False
    return True


def _in_hf_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def check_hub_name(name: str, aliases: Collection[str]) -> None:
    """Refuse at once a backbone ``name`` (not an alias, not an existing path) that cannot be a
    loadable Hub model here; return quietly when it can.

    Raises:
        BackboneNotFoundError: ``name`` is not in the HF cache and is not of the form
            ``owner/name``, or the Hub is offline (``HF_HUB_OFFLINE``) or unreachable.
    """
    if _in_hf_cache(name):
        return
    names = ", ".join(repr(a) for a in aliases)
    hint = did_you_mean(name, aliases)
    if not _HUB_ID.fullmatch(name):
        raise BackboneNotFoundError(
            f"Backbone {name!r} is not an alias ({names}), not an existing local folder and not "
            f"a Hugging Face Hub name of the form owner/name.{hint} Pass an alias, a folder "
            "written by save_pretrained, or a Hub name such as HuggingFaceTB/SmolLM2-135M-Instruct."
        )
    if hub_offline():
        where = "the Hugging Face Hub is offline (HF_HUB_OFFLINE is set)"
        fix = "unset HF_HUB_OFFLINE on a machine with internet access"
    elif not hub_reachable():
        from huggingface_hub import constants

        where = f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached"
        fix = "connect to the internet"
    else:
        return
    raise BackboneNotFoundError(
        f"Backbone {name!r} could not be found: it is not an alias ({names}), not a local folder, "
        f"and not in the Hugging Face cache, and {where}.{hint} Use an alias, a folder written by "
        f"save_pretrained, or {fix} (or download it there once into the cache)."
    )


def read_model_types(resolved: str) -> list[str]:
    """``model_type`` of the ``config.json`` of a local folder or Hub model (only that file is
    read or downloaded), then that of its ``text_config`` if it has one (a causal LM loader may
    build the text model of a multimodal checkpoint); ``[]`` when the file cannot be read (the
    model load then reports why)."""
    try:
        if os.path.isdir(resolved):
            with open(os.path.join(resolved, "config.json")) as handle:
                config = json.load(handle)
        else:
            from transformers import PretrainedConfig

            config, _ = PretrainedConfig.get_config_dict(resolved)
    except Exception:  # noqa: BLE001 - unreadable: leave the error to from_pretrained
        return []
    if not isinstance(config, dict):
        return []
    text = config.get("text_config")
    found = [config.get("model_type"), text.get("model_type") if isinstance(text, dict) else None]
    return [t for t in found if isinstance(t, str)]


def check_architecture(resolved: str, name: str) -> None:
    """Refuse a backbone whose ``config.json`` names an architecture the sites table lacks, with
    the one-line :class:`~interventions.core.errors.ConfigError` of
    :func:`~interventions.core.sites.check_model_type` (nothing is checked when the file cannot
    be read: the load reports that)."""
    types = read_model_types(resolved)
    for model_type in types[1:]:  # a multimodal checkpoint's text model may be supported
        with contextlib.suppress(ValueError):
            check_model_type(model_type)
            return
    if types:
        check_model_type(types[0], backbone=name)
