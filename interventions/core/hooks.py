"""Attach edits to a model for the duration of a ``with`` block.

``with attach(model, edit, beta=...)`` registers one forward hook per intervention point (layer x
site or read point, from :mod:`interventions.core.sites`) plus one pre-hook on the model itself that reads the
attention mask of every forward call.  From the mask it computes, for every column of the
current input, the index of that token among the row's *real* tokens (``-1`` on padding), so
left padding, right padding and batch size never change which token an edit touches.

Generation with the KV cache is handled the same way: a decoding step sees only the new token
but the full attention mask, so its position is still counted correctly.  Edits tied to prompt
positions apply at prefill (a generated token's position lies past the prompt), and the prefill
tells them each prompt's length (``PositionContext.prompt_lengths``), so an edit made for prompts
of one length refuses others there, whoever calls the model; edits defined on
every token or on the last token also apply to each generated token.  "Last token" means the
last real token of the prompt *and every token generated after it*, so cached generation and a
step-by-step loop without the cache (re-running the growing sequence inside the same ``with``
block) give identical results.  A ``with`` block therefore covers one batch of prompts and their
continuations: open a new block for a new batch (a call whose tokens do not extend the block's
first prompt is taken as a new prompt).  A block may also start with a cached call whose prompt
prefix ran outside the block (a cache given): the first token of that call is then
taken as the prompt's last token, so a prompt's cache can be computed once and reused for many
edited continuations.

An edit is any object with the :class:`Edit` protocol: ``points()``, ``prepare(ctx, beta)`` (once
per forward call) and ``apply(layer, site, h, state)`` (once per point).  ``apply`` receives each
activation where it lives: an edit whose tensors are on another device or in another dtype than
the activations (a model split over devices, a bfloat16 backbone with float32 edit values) moves
them to ``h``'s device and returns ``h``'s dtype (the edits of :mod:`interventions.edits` do).

Activation checkpointing (:func:`checkpoint_layers`) recomputes each decoder layer in the
backward pass, usually after the ``with`` block has ended.  The recomputation runs the hooks
that were inside the layer when it first ran, with the state of that forward call, so an edit
acts on the recomputed activations exactly as it did; edits are pure functions of their
parameters, so that is the same computation.  An edit that only reads (a recorder: ``apply``
returns ``h`` itself, or a copy) sets ``records = True`` and is skipped in the recomputation, so
nothing is recorded twice.  An edit that changes values or starts a gradient path (e.g. adds a
zero leaf that requires grad) must not set it: the recomputation has to repeat it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from interventions.core.kv_cache import CACHE_KEYWORDS, passed_cache
from interventions.core.sites import layers, model_dims, point_module


@dataclass
class PositionContext:
    """Token positions of the current forward call.

    Attributes:
        pos: ``[batch, seq]`` index of each column among its row's real tokens; ``-1`` on padding.
        last: ``[batch, seq]`` true at the prompt's last real token and at every token generated
            after it.
        prompt_lengths: ``[batch]`` number of real tokens of each row's prompt on a call that
            starts a new prompt (a prefill); ``None`` on a call that continues one (a decoding
            step, with or without the cache, or a call whose prompt's cache ran before the
            block).  Edits that tie parameters to prompt positions check it (see
            :meth:`interventions.edits.PointEdit.check_prompt_lengths`).
    """

    pos: Tensor
    last: Tensor
    prompt_lengths: Tensor | None = None


class Edit(Protocol):
    """What :func:`attach` needs from an edit.

    Optionally ``records = True``: the edit only reads (``apply`` returns ``h`` itself or a copy),
    so the recomputation of activation checkpointing skips it (see the module docstring).
    """

    def points(self) -> Sequence[tuple[int, str]]:
        """The (layer, site) pairs the edit touches."""
        ...

    def prepare(self, ctx: PositionContext, beta: Tensor) -> Any:
        """Per-forward-call state shared by all points (e.g. gathered position indices)."""
        ...

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        """Return the edited activation ``h`` (``[batch, seq, width]``) at one point."""
        ...


def _past_length(kwargs: dict, seq: int) -> int:
    """How many tokens of each row's sequence are already in the key/value cache.

    Read from the cache object under whichever keyword the caller used (``cache`` since
    transformers 5.24, ``past_key_values`` before), else from ``cache_position`` (older
    ``generate()``), else from the attention mask: a 2-d mask covers the cached tokens and the new
    ones, so its extra columns are the cached ones.
    """
    cache = passed_cache(kwargs)
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    cache_position = kwargs.get("cache_position")
    if cache_position is not None and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return max(int(mask.shape[1]) - seq, 0)
    return 0


class _Session:
    """The live state of one ``attach`` block."""

    def __init__(self, edit: Edit, beta: float | Tensor) -> None:
        self.edit = edit
        self.beta = beta
        self.records = bool(getattr(edit, "records", False))
        self.replaying = False  # inside activation checkpointing's recomputation
        self.state: Any = None
        self.ctx: PositionContext | None = None
        self._prompt: list[Tensor] | None = None  # real tokens of each row of the first prompt
        self._last_start: Tensor | None = None  # [batch] position of each prompt's last token

    def _beta_for(self, batch: int, like: Tensor) -> Tensor:
        if isinstance(self.beta, Tensor):
            if self.beta.dim() == 2:  # [batch, layers of the edit]: one beta per row and layer
                beta = self.beta
                if beta.shape[0] == 1:
                    beta = beta.expand(batch, -1)
            else:
                beta = self.beta.reshape(-1)
                if beta.numel() == 1:
                    beta = beta.expand(batch)
            if beta.shape[0] != batch:
                raise ValueError(
                    f"beta has {beta.shape[0]} rows but the batch has {batch}; pass a float, one "
                    "beta per row, or a [batch, layers] tensor (generate() with "
                    "num_return_sequences > 1 or beams repeats rows: repeat beta the same way)."
                )
            return beta.to(device=like.device)
        # float32 whatever the default dtype (Lightning's 16-true makes it float16 in a step)
        return torch.full((batch,), float(self.beta), device=like.device, dtype=torch.float32)

    def _continues_prompt(self, input_ids: Tensor | None, mask: Tensor | None) -> bool:
        if self._prompt is None or input_ids is None or input_ids.shape[0] != len(self._prompt):
            return False
        if mask is not None and mask.shape[1] != input_ids.shape[1]:
            return False  # a call with fewer columns than its mask continues a cache
        for row, prompt in enumerate(self._prompt):
            ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
            if ids.numel() <= prompt.numel() or not torch.equal(ids[: prompt.numel()], prompt):
                return False
        return True

    def root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise ValueError("attach: the model was called without input_ids or inputs_embeds.")
        batch, seq = ref.shape[0], ref.shape[1]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            mask = None  # a custom 4-d mask: positions fall back to column indices
        past = _past_length(kwargs, seq)
        if mask is not None:
            full = mask.to(torch.long)
            real = full[:, -seq:].bool()
            pos = torch.where(real, full.cumsum(1)[:, -seq:] - 1, -1)
            total = full.sum(1)
        else:
            pos = (past + torch.arange(seq, device=ref.device)).expand(batch, seq)
            total = torch.full((batch,), past + seq, device=ref.device)
        prompt_lengths = None
        if past == 0 and not self._continues_prompt(input_ids, mask):
            # a new prompt: remember it so that later calls extending it count as generation
            prompt_lengths = total
            self._last_start = total - 1
            if input_ids is not None:
                self._prompt = [
                    input_ids[r] if mask is None else input_ids[r][mask[r].bool()]
                    for r in range(batch)
                ]
            else:
                self._prompt = None
            last = pos == self._last_start[:, None]
        else:
            if self._last_start is None or self._last_start.shape[0] != batch:
                # The prompt's cache was computed outside this block (e.g. a prefix run once and
                # reused for many continuations): the first token of this call is the prompt's
                # last token, and every later one counts as generated.
                self._last_start = total - seq
                self._prompt = None
            last = (pos >= self._last_start[:, None]) & (pos >= 0)
        self.ctx = PositionContext(pos=pos, last=last, prompt_lengths=prompt_lengths)
        self.state = self.edit.prepare(self.ctx, self._beta_for(batch, ref))


def _output_hook(session: _Session, edit: Edit, layer: int, site: str):
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if session.replaying and session.records:
            return output
        if isinstance(output, tuple):
            return (edit.apply(layer, site, output[0], session.state), *output[1:])
        return edit.apply(layer, site, output, session.state)

    hook.session = session  # type: ignore[attr-defined]  # found by _Replay
    return hook


def _input_hook(session: _Session, edit: Edit, layer: int, site: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if session.replaying and session.records:
            return None
        if args:
            return (edit.apply(layer, site, args[0], session.state), *args[1:]), kwargs
        if "hidden_states" in kwargs:  # a decoder layer called with keywords (layer_in)
            h = edit.apply(layer, site, kwargs["hidden_states"], session.state)
            return args, {**kwargs, "hidden_states": h}
        raise RuntimeError(
            f"attach: {type(module).__name__} at layer {layer} ({site}) received its input as a "
            "keyword; the sites table expects it as the first positional argument."
        )

    hook.session = session  # type: ignore[attr-defined]  # found by _Replay
    return hook


@contextmanager
def attach(model: nn.Module, edit: Edit, beta: float | Tensor = 1.0) -> Iterator[_Session]:
    """Apply ``edit`` to every forward call of ``model`` inside the block.

    Args:
        model: a Hugging Face causal LM whose architecture is in the sites table.
        edit: the edit (see :class:`Edit`); if it has ``check_compatible(model)`` that is called
            first, so an edit made for another architecture or size fails with a clear message.
        beta: strength and sign of the edit: a float for every row, a tensor with one value per
            row of the batch (so beta = +1, -1 and 0 rows can share one forward pass), or a
            ``[batch, len(edit.layers)]`` tensor with one value per row and layer of the edit (so
            each row can steer its own layer, as the layer sweep does).

    Yields:
        The live session; ``session.ctx`` holds the positions of the latest forward call.
    """
    check = getattr(edit, "check_compatible", None)
    if check is not None:
        check(model_dims(model))
    session = _Session(edit, beta)
    handles = [model.register_forward_pre_hook(session.root_pre_hook, with_kwargs=True)]
    try:
        for layer, site in edit.points():
            module, side = point_module(model, layer, site)
            if side == "output":
                hook = _output_hook(session, edit, layer, site)
                handles.append(module.register_forward_hook(hook, prepend=True))
            else:
                hook = _input_hook(session, edit, layer, site)
                handles.append(
                    module.register_forward_pre_hook(hook, prepend=True, with_kwargs=True)
                )
        yield session
    finally:
        for handle in handles:
            handle.remove()


def last_token_index(attention_mask: Tensor) -> Tensor:
    """``[batch]`` column index of each row's last real token (works for left and right padding)."""
    seq = attention_mask.shape[1]
    cols = torch.arange(seq, device=attention_mask.device)
    return torch.where(attention_mask.bool(), cols, -1).max(dim=1).values


def last_token_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``[batch, vocab]`` next-token logits at each row's last real token.

    Position ids are counted on real tokens, so left and right padding give the same logits as
    the unpadded prompt.  Only the columns where some row ends are projected to the vocabulary
    (``logits_to_keep`` as a 1-D index tensor of those positions: one column with left padding),
    which saves most of the unembedding cost for either padding side.  A 1-D index works on every
    supported transformers (5.20 has no per-row 2-D form).  The index lives on the CPU, which
    indexes hidden states on any device: on a model split over GPUs they come out on the last
    one, not on the device of ``input_ids``.
    """
    idx = last_token_index(attention_mask)
    keep, column = torch.unique(idx, return_inverse=True)  # end positions; each row's among them
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=keep.cpu(),
    ).logits  # [batch, len(keep), vocab]
    return logits[torch.arange(input_ids.shape[0], device=logits.device), column.to(logits.device)]


def keep_last_column(input_ids: Tensor) -> Tensor:
    """``logits_to_keep`` that projects only the last column to the vocabulary.

    The same as ``logits_to_keep=1``, but as an index tensor: Hugging Face slices the hidden
    states with it by gathering a contiguous copy, while the integer gives a strided view that
    ``F.linear`` multiplies as a batched matmul against the expanded unembedding, about 4x slower
    on CPU for a 49k-token vocabulary (forward and backward; ``bench/README.md``).  A CPU tensor
    whatever the device of ``input_ids``: it indexes the final hidden states, which a model split
    over devices puts on its last one.
    """
    return torch.tensor([input_ids.shape[1] - 1])


def position_ids(attention_mask: Tensor) -> Tensor:
    """Mask-aware position ids (``[batch, seq]``): real tokens count 0, 1, 2, ... in every row.

    Hugging Face models number columns, not tokens, when called directly; passing these makes a
    left-padded row see the same positions as the same prompt unpadded.
    """
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


class _Recorder:
    """An edit that changes nothing and keeps what it sees."""

    records = True

    def __init__(self, points: Sequence[tuple[int, str]], detach: bool) -> None:
        self._points = list(points)
        self.detach = detach
        self.activations: dict[tuple[int, str], Tensor] = {}

    def points(self) -> list[tuple[int, str]]:
        return self._points

    def prepare(self, ctx: PositionContext, beta: Tensor) -> None:
        return None

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        self.activations[(layer, site)] = h.detach() if self.detach else h
        return h


@contextmanager
def record(
    model: nn.Module, points: Sequence[tuple[int, str]], detach: bool = True
) -> Iterator[dict[tuple[int, str], Tensor]]:
    """Record the activations at ``points`` (``(layer, site)`` pairs) of the forward calls inside.

    Yields a dict filled on each forward call: ``(layer, site) -> [batch, seq, width]`` (the latest
    call's values).  Hooks are prepended, so the last block opened runs first at each point: a
    ``record`` block opened *outside* (before) an ``attach`` block sees the edited activations,
    one opened *inside* it sees them before that edit.
    """
    recorder = _Recorder(points, detach)
    with attach(model, recorder):
        yield recorder.activations


# --------------------------------------------------------------------------------------------
# activation checkpointing

_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
_CACHE_ARGUMENTS = (*CACHE_KEYWORDS, "layer_past")


class _Replay:
    """The forward hooks inside one decoder layer (its submodules') and the per-call state of the
    :func:`attach` sessions they belong to, as they were when the layer ran; installed again while
    activation checkpointing recomputes the layer (the ``with`` block has usually ended)."""

    def __init__(self, layer: nn.Module) -> None:
        self.modules = [m for m in layer.modules() if m is not layer]
        self.hooks = [{n: OrderedDict(getattr(m, n)) for n in _HOOK_DICTS} for m in self.modules]
        sessions: dict[int, tuple[_Session, Any]] = {}
        for hooks in self.hooks:
            for fn in (*hooks["_forward_pre_hooks"].values(), *hooks["_forward_hooks"].values()):
                session = getattr(fn, "session", None)
                if isinstance(session, _Session):
                    sessions[id(session)] = (session, session.state)
        self.sessions = list(sessions.values())

    @contextmanager
    def installed(self) -> Iterator[None]:
        live = [{n: getattr(m, n) for n in _HOOK_DICTS} for m in self.modules]
        states = [(session, session.state) for session, _ in self.sessions]
        try:
            for module, hooks in zip(self.modules, self.hooks, strict=True):
                for name, hook_dict in hooks.items():
                    setattr(module, name, hook_dict)
            for session, state in self.sessions:
                session.state, session.replaying = state, True
            yield
        finally:
            for module, hooks in zip(self.modules, live, strict=True):
                for name, hook_dict in hooks.items():
                    setattr(module, name, hook_dict)
            for session, state in states:
                session.state, session.replaying = state, False


class _CheckpointedForward:
    """A decoder layer's ``forward`` under :func:`torch.utils.checkpoint.checkpoint` (non
    reentrant) whenever grad is enabled; without grad it is the plain ``forward``.

    The layer's own hooks (``layer_in``, ``resid_post``) stay outside the checkpoint; those of its
    submodules run again in the recomputation (see :class:`_Replay`).  A key/value cache holding
    this layer's earlier tokens cannot be recomputed (the update would append them twice): such
    a call runs without checkpointing.  An empty cache is not filled, as Hugging Face's own
    gradient checkpointing does: do not reuse the cache of a checkpointed call with grad.
    """

    def __init__(self, layer: nn.Module, index: int) -> None:
        self.layer = layer
        self.index = index
        self.original = layer.__dict__.get("forward")  # e.g. Accelerate's wrapper; else None
        self.signature = inspect.signature(self._forward)

    @property
    def _forward(self) -> Any:
        if self.original is not None:
            return self.original
        return type(self.layer).forward.__get__(self.layer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = self._forward
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        bound = self.signature.bind_partial(*args, **kwargs)
        for name in _CACHE_ARGUMENTS:
            cache = bound.arguments.get(name)
            if cache is None:
                continue
            length = getattr(cache, "get_seq_length", None)
            if length is None or length(self.index) != 0:
                return forward(*args, **kwargs)  # earlier tokens in the cache: no recomputation
            bound.arguments[name] = None
            if "use_cache" in self.signature.parameters:
                bound.arguments["use_cache"] = False
        replay = _Replay(self.layer)
        with torch.utils.checkpoint.set_checkpoint_early_stop(False):  # every hook replays
            return torch.utils.checkpoint.checkpoint(
                forward,
                *bound.args,
                use_reentrant=False,
                context_fn=lambda: (nullcontext(), replay.installed()),
                **bound.kwargs,
            )


def checkpoint_layers(model: nn.Module, enabled: bool = True) -> None:
    """Activation checkpointing through a frozen backbone: while grad is enabled, each decoder
    layer keeps only its input and is recomputed in the backward pass, so the memory of the
    activations no longer grows with the number of layers (about one more forward pass of time).

    Hugging Face's ``gradient_checkpointing_enable`` acts only in train mode, and a frozen
    backbone stays in eval mode; this wraps each layer's ``forward`` (after Accelerate's dispatch
    hooks, so an offloaded layer loads its weights again for the recomputation).  Gradients are
    the same as without it.  ``enabled=False`` removes the wrapping.
    """
    for index, layer in enumerate(layers(model)):
        current = layer.__dict__.get("forward")
        if isinstance(current, _CheckpointedForward):
            if enabled:
                continue
            if current.original is None:
                del layer.__dict__["forward"]
            else:
                layer.forward = current.original
        elif enabled:
            layer.forward = _CheckpointedForward(layer, index)
