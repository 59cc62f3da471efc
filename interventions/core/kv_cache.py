"""The key/value cache under whatever name the installed transformers uses.

transformers 5.24 renamed the cache keyword of every model's ``forward`` from ``past_key_values``
to ``cache`` (the old name warns and goes away in 5.40), renamed the output field the same way,
and stopped passing ``cache_position`` from ``generate()``.  Everything in this project that calls
a model with a cache, or reads the cache a call returned, goes through the three helpers here, so
the name is decided in one place, by looking at the model's signature (feature detection, once
per model class), never by comparing version strings:

- :func:`with_cache` -- the keyword arguments that pass a cache to a forward call;
- :func:`output_cache` -- the cache a forward call returned;
- :func:`passed_cache` -- the cache object a forward call was given, under any known name (the
  hooks use it to count the tokens already in the cache).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

# every name a transformers release has used for the cache argument, newest first
CACHE_KEYWORDS = ("cache", "past_key_values", "cache_params")


@functools.cache
def _library_keyword() -> str:
    """The name the installed transformers gives the cache field of a causal LM's output."""
    names = {f.name for f in fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


@functools.cache
def _keyword_of(cls: type) -> str | None:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # a forward without an inspectable signature
        return None
    for name in CACHE_KEYWORDS:
        if name in params:
            return name
    return None


def cache_keyword(model: nn.Module) -> str:
    """The keyword ``model``'s forward takes its cache under (``"cache"`` or ``"past_key_values"``).

    Read from the signature of the model's ``forward`` (a PEFT wrapper's base model is looked
    through); where the signature names neither (a ``**kwargs`` wrapper), the name the installed
    transformers uses for its own outputs.
    """
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        name = _keyword_of(type(model))
        if name is not None:
            return name
        inner = getattr(model, "get_base_model", None)
        if not callable(inner):
            break
        model = inner()
    return _library_keyword()


def with_cache(model: nn.Module, cache: Any) -> dict[str, Any]:
    """Keyword arguments that pass ``cache`` to ``model(...)`` (and ask for the updated one back).

    ``cache=None`` gives ``{"use_cache": False}``: a plain call that neither reads nor writes one.
    """
    if cache is None:
        return {"use_cache": False}
    return {cache_keyword(model): cache, "use_cache": True}


def output_cache(output: Mapping[str, Any]) -> Any:
    """The key/value cache a forward call with ``use_cache=True`` returned (``None`` if none).

    Reads the output by key, so the deprecated ``past_key_values`` property of transformers >= 5.24
    (which logs a warning) is never touched.
    """
    for name in CACHE_KEYWORDS:
        if name in output.keys():
            return output[name]
    return None


def passed_cache(kwargs: Mapping[str, Any]) -> Any:
    """The cache object among a forward call's keyword arguments, under any known name."""
    for name in CACHE_KEYWORDS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None
