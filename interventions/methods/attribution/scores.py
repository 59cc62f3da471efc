"""Attribution scores as activation scalars (activation scaling, Stoehr et al., Sec. 6.1, Fig. 9).

Three classic attribution methods give one score per ``(layer, site, position)``; plugged into an
:class:`~interventions.edits.ActivScalar` as its ``alpha`` and given a searched global ``beta``,
they become steering interventions that can be compared with a learned ActivScalar.

**The metric.**  ``L = logit(correct) - logit(wrong)`` at each prompt's last token.  All prompts of
a batch must have one token length ``T`` (position-tied scores; use ``fixed_length: true``), and
a position is counted on a row's real tokens (padding is stripped first, so the padding side and
batch composition never change a score).  Scores of a batch are per example, ``[batch, layers,
T]`` per site; a run averages them over the training split.

**The methods** (for a site ``s`` in ``resid_post``, ``attn_out``, ``mlp_out``; ``a`` is the
``d_model`` activation at layer ``l``, position ``p``):

* ``actpatch`` — activation patching: ``L(clean run with a(l, s, p) replaced by the corrupted
  run's a(l, s, p)) - L(clean)``, one patched forward per point.  The points are batched as rows
  (each prompt expanded over its points), and the prompt prefix before the first token where the
  corrupted prompt differs runs once and is shared through the key/value cache: by causality the
  activations there are equal in both runs, so their score is exactly 0 and is not computed.
* ``attrpatch`` — attribution patching, its first-order estimate:
  ``(a_corrupted - a_clean) . dL/da`` with the gradient at the clean run (one forward + backward
  on clean, one forward on corrupted; a zero "probe" added at every point carries the gradient).
  Also exactly 0 before the first differing token.
* ``dla`` — direct logit attribution: ``a(l, s, T-1) . u`` with
  ``u = P(g * (W_U[correct] - W_U[wrong])) / sigma``, the unembedding difference pulled back
  through the final norm *linearised at the clean run*: ``g`` is the norm's gain, ``P`` centres a
  vector for LayerNorm (identity for RMSNorm) and ``sigma`` is the norm's scale of the clean
  final residual at the last position (its RMS, or standard deviation, with the norm's epsilon).
  Biases of the norm and unembedding are constant and not attributed; Gemma 2's final logit
  soft-capping is ignored (pre-cap logits).  Only the last position reaches the logits directly,
  so DLA is 0 at every other position (as expected; the paper notes that DLA fails to steer).
  On ``resid_post`` the same projection gives the "direct" logit difference of the whole residual
  stream at that layer (a logit lens).  The final norm comes from the sites table; its gain and
  scale are measured by calling it on probe vectors, so RMSNorm, LayerNorm and Gemma's
  ``(1 + w)`` gain need no special cases.

**Scores as scalars.**  ``alpha = sign * score / max|score|`` (``normalize=True``; the maximum runs
over every site, layer and position) with ``sign = -1`` for the patching methods and ``+1`` for
DLA, so that ``alpha > 0`` marks an activation that supports the correct answer (a patching score
is negative where the corrupted activation lowers ``L``).  Then, as for a learned ActivScalar
(:mod:`interventions.evaluation.objectives`), ``beta > 0`` steers towards the *correct* token and ``beta < 0``
towards the *wrong* (the corrupted run's) token.  A 1-d search over a signed, log-spaced beta grid
on the validation prompts evaluates every beta as the pair ``(+beta, -beta)`` of the effectiveness
metric and keeps the beta with the highest flip rate (ties: higher effectiveness, then the smallest
``|beta|``, then the positive sign); the smallest ``|beta|`` that flips the *mean* logit difference
is reported too.

:class:`AttributionScalarModule` runs all of this from ``train.py fit``: one epoch accumulates the
scores over the training split (no optimiser), the end of ``fit`` searches beta, evaluates the test
prompts, exports the ActivScalar (``alpha`` = the normalised scores, the chosen beta in the JSON's
``extra.beta``), and writes ``scores.safetensors``, ``metrics.json`` and heatmaps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions.core.dispatch import input_device, loaded_tensor
from interventions.core.errors import ConfigError
from interventions.core.hooks import (
    PositionContext,
    attach,
    keep_last_column,
    last_token_logits,
    record,
)
from interventions.core.kv_cache import output_cache, with_cache
from interventions.core.sites import arch_row, check_layer, check_sites, model_dims
from interventions.evaluation.objectives import logit_diff

Method = Literal["actpatch", "attrpatch", "dla"]
METHODS: tuple[str, ...] = ("actpatch", "attrpatch", "dla")
"""The attribution methods, in the paper's order (Fig. 9, left to right)."""

ATTRIBUTION_SITES: tuple[str, ...] = ("resid_post", "attn_out", "mlp_out")
"""Sites the methods score: each carries one ``d_model`` vector per token."""

ALPHA_SIGN: dict[str, float] = {"actpatch": -1.0, "attrpatch": -1.0, "dla": 1.0}
"""``alpha = sign * score / scale``: positive alpha = the activation supports the correct token."""

NEEDS_CORRUPTED: frozenset[str] = frozenset({"actpatch", "attrpatch"})

Scores = dict[str, Tensor]
"""site -> ``[batch, layers, positions]`` (per example) or ``[layers, positions]`` (a mean)."""


# ------------------------------------------------------------------------------ batch handling
@dataclass
class PromptBatch:
    """A batch with its padding removed: every row has the same ``T`` real tokens.

    Attributes:
        ids: ``[batch, T]`` clean token ids.
        correct: ``[batch]`` id of the correct answer token.
        wrong: ``[batch]`` id of the wrong answer token.
        corrupted: ``[batch, T]`` corrupted token ids, or ``None``.
    """

    ids: Tensor
    correct: Tensor
    wrong: Tensor
    corrupted: Tensor | None

    @property
    def length(self) -> int:
        """The prompt token length ``T``."""
        return self.ids.shape[1]

    def first_difference(self) -> Tensor:
        """``[batch]`` first position where the corrupted prompt differs (``T`` if nowhere)."""
        if self.corrupted is None:
            raise ValueError("This batch has no corrupted prompts.")
        differs = self.ids != self.corrupted
        cols = torch.arange(self.length, device=self.ids.device).expand_as(differs)
        return torch.where(differs, cols, self.length).min(dim=1).values


def real_tokens(ids: Tensor, mask: Tensor, what: str) -> Tensor:
    lengths = mask.sum(1)
    if bool((lengths != lengths[0]).any()):
        raise ValueError(
            f"Attribution scores are tied to prompt positions, so every prompt of a batch needs "
            f"the same token length, but the {what} prompts of this batch have "
            f"{sorted(set(lengths.tolist()))} tokens. Use a data module with fixed_length=true."
        )
    return ids[mask.bool()].view(ids.shape[0], int(lengths[0]))


def prompt_batch(batch: dict[str, Any], need_corrupted: bool, method: str = "") -> PromptBatch:
    """Validate a contrastive batch (:class:`datamodules.base.ContrastiveCollator`) and strip its
    padding.

    Raises:
        ValueError: a key is missing, the prompts differ in token length, or a corrupted prompt
            has another token length than its clean prompt.
    """
    for key in ("input_ids", "attention_mask", "correct_id", "wrong_id"):
        if key not in batch:
            raise ValueError(
                f"The batch has no {key!r}; attribution needs a contrastive batch with "
                "input_ids, attention_mask, correct_id and wrong_id (datamodules.base)."
            )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    clean = real_tokens(ids, mask, "clean")
    corrupted = None
    if need_corrupted:
        if "corrupted_input_ids" not in batch or "corrupted_attention_mask" not in batch:
            raise ValueError(
                f"{method or 'This method'} patches in activations of corrupted prompts, but the "
                "batch has no 'corrupted_input_ids' / 'corrupted_attention_mask'. Use a data "
                "module whose examples have a corrupted_prompt (IOI, CCC), or method='dla'."
            )
        cmask = batch["corrupted_attention_mask"]
        if cmask.shape != mask.shape or bool((cmask.sum(1) != mask.sum(1)).any()):
            raise ValueError(
                "Each corrupted prompt must have the same token length as its clean prompt "
                f"(clean lengths {mask.sum(1).tolist()}, corrupted {cmask.sum(1).tolist()})."
            )
        corrupted = real_tokens(batch["corrupted_input_ids"], cmask, "corrupted")
    return PromptBatch(clean, batch["correct_id"], batch["wrong_id"], corrupted)


def check_method(method: str) -> None:
    """Raise a clear error for an unknown method name."""
    if method not in METHODS:
        raise ValueError(f"Unknown attribution method {method!r}; choose one of {list(METHODS)}.")


def check_attribution_sites(sites: str | Sequence[str]) -> list[str]:
    """The distinct sites (one name or a list), or a clear
    :class:`~interventions.core.errors.ConfigError` for a site the methods cannot score."""
    if not sites:
        raise ConfigError(f"Give at least one site out of {list(ATTRIBUTION_SITES)}.")
    names = check_sites(sites)
    for site in names:
        if site not in ATTRIBUTION_SITES:
            raise ConfigError(
                f"Attribution scores one d_model vector per token; site {site!r} is not supported. "
                f"Use sites out of {list(ATTRIBUTION_SITES)}."
            )
    return names


def attribution_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = model_dims(model).num_layers
    if layers is None:
        return list(range(n))
    for layer in layers:
        check_layer(layer, n)
    return list(layers)


def _ones_call(ids: Tensor) -> dict[str, Tensor]:
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


# ------------------------------------------------------------------------------ ActPatch
class _PointPatch:
    """An edit (hooks protocol) replacing, in each row, the activation at one ``(layer, site,
    position)`` by a given vector; rows with ``layer = -1`` are left alone."""

    def __init__(
        self,
        points: Sequence[tuple[int, str]],
        layer: Tensor,
        site: Tensor,
        position: Tensor,
        values: Tensor,
        sites: Sequence[str],
    ) -> None:
        self._points = list(points)
        self.layer, self.site, self.position = layer, site, position  # [rows] each
        self.values = values  # [rows, d_model]
        self._site_index = {s: i for i, s in enumerate(sites)}

    def points(self) -> list[tuple[int, str]]:
        return self._points

    def prepare(self, ctx: PositionContext, beta: Tensor) -> Tensor:
        return ctx.pos  # [rows, seq]

    def apply(self, layer: int, site: str, h: Tensor, pos: Tensor) -> Tensor:
        rows = (self.layer == layer) & (self.site == self._site_index[site])  # [rows]
        hit = rows[:, None] & (pos == self.position[:, None])  # [rows, seq]
        if not bool(hit.any()):
            return h
        return torch.where(hit[..., None], self.values[:, None, :].to(h.dtype), h)


@torch.no_grad()
def actpatch_scores(
    model: nn.Module,
    batch: PromptBatch,
    sites: Sequence[str],
    layers: Sequence[int] | None = None,
    chunk_size: int = 128,
    progress: bool = False,
) -> Scores:
    """Activation patching: ``site -> [batch, layers, T]`` of ``L(patched) - L(clean)``.

    See the module docstring.  ``chunk_size`` is the number of patched rows per forward call.
    """
    if batch.corrupted is None:
        raise ValueError("actpatch needs corrupted prompts (batch.corrupted is None).")
    sites = check_attribution_sites(sites)
    layers = attribution_layers(model, layers)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    points = [(layer, site) for layer in layers for site in sites]
    n, length = batch.ids.shape
    device = batch.ids.device
    with record(model, points) as acts:
        last_token_logits(model, **_ones_call(batch.corrupted))
    # [layers, sites, batch, T, d] the corrupted activations
    corrupted = torch.stack([torch.stack([acts[(l_, s)] for s in sites]) for l_ in layers])
    first = batch.first_difference().tolist()  # positions before it score exactly 0
    start = min(first)
    if start >= length:  # every corrupted prompt equals its clean prompt: nothing changes
        return {site: torch.zeros(n, len(layers), length) for site in sites}
    # rows: (prompt, layer index, site index, position); one unpatched row per prompt
    plan = [(b, -1, 0, 0) for b in range(n)]
    plan += [
        (b, li, si, p)
        for b in range(n)
        for li in range(len(layers))
        for si in range(len(sites))
        for p in range(first[b], length)
    ]
    rows = torch.tensor(plan, dtype=torch.long, device=device)  # [R, 4]
    prefix = None
    if start > 0:  # the shared prefix runs once; its cache is copied to the rows
        prefix = output_cache(
            model(
                input_ids=batch.ids[:, :start],
                attention_mask=torch.ones_like(batch.ids[:, :start]),
                use_cache=True,
                logits_to_keep=keep_last_column(batch.ids[:, :start]),
            )
        )
    layer_ids = torch.tensor(layers, device=device)
    out = torch.empty(len(plan), device=device)
    chunks = range(0, len(plan), chunk_size)
    for lo in tqdm(chunks, desc="actpatch", disable=not progress, leave=False):
        part = rows[lo : lo + chunk_size]
        prompt, li, si, pos = part.unbind(1)
        patched = li >= 0
        values = corrupted[li.clamp(min=0), si, prompt, pos]  # [r, d]
        layer = torch.where(patched, layer_ids[li.clamp(min=0)], -1)
        edit = _PointPatch(points, layer, si, pos, values, sites)
        ids = batch.ids[prompt]  # [r, T]
        kwargs: dict[str, Any] = dict(attention_mask=torch.ones_like(ids))
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.reorder_cache(prompt)
            kwargs.update(
                input_ids=ids[:, start:],
                position_ids=torch.arange(start, length, device=device).expand(len(part), -1),
                **with_cache(model, cache),
            )
        else:
            kwargs.update(
                input_ids=ids, position_ids=torch.arange(length, device=device).expand_as(ids)
            )
        kwargs["logits_to_keep"] = keep_last_column(kwargs["input_ids"])
        with attach(model, edit):
            logits = model(**kwargs).logits[:, -1]
        out[lo : lo + len(part)] = logit_diff(logits, batch.correct[prompt], batch.wrong[prompt])
    clean = out[:n]  # the unpatched rows
    scores = torch.zeros(n, len(layers), len(sites), length, device=device)
    prompt, li, si, pos = rows[n:].unbind(1)
    scores[prompt, li, si, pos] = (out[n:] - clean[prompt]).float()
    return {site: scores[:, :, i].cpu() for i, site in enumerate(sites)}


# ------------------------------------------------------------------------------ AttrPatch
class _GradientProbe:
    """An edit adding a zero tensor that requires grad at every point, so that ``dL/da`` of each
    activation ``a`` is the gradient of its probe; also keeps the activations.

    ``hooks.record(..., detach=False)`` is not enough here: the backbone is frozen and the inputs
    are token ids, so without a leaf that requires grad no autograd graph is built at all."""

    def __init__(self, points: Sequence[tuple[int, str]]) -> None:
        self._points = list(points)
        self.probes: dict[tuple[int, str], Tensor] = {}
        self.values: dict[tuple[int, str], Tensor] = {}

    def points(self) -> list[tuple[int, str]]:
        return self._points

    def prepare(self, ctx: PositionContext, beta: Tensor) -> None:
        return None

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        probe = torch.zeros_like(h, requires_grad=True)
        self.probes[(layer, site)] = probe
        self.values[(layer, site)] = h.detach()
        return h + probe


def attrpatch_scores(
    model: nn.Module,
    batch: PromptBatch,
    sites: Sequence[str],
    layers: Sequence[int] | None = None,
) -> Scores:
    """Attribution patching: ``site -> [batch, layers, T]`` of ``(a_corr - a_clean) . dL/da``."""
    if batch.corrupted is None:
        raise ValueError("attrpatch needs corrupted prompts (batch.corrupted is None).")
    sites = check_attribution_sites(sites)
    layers = attribution_layers(model, layers)
    points = [(layer, site) for layer in layers for site in sites]
    with torch.no_grad(), record(model, points) as acts:
        last_token_logits(model, **_ones_call(batch.corrupted))
    corrupted = dict(acts)
    probe = _GradientProbe(points)
    with torch.enable_grad(), attach(model, probe):
        logits = last_token_logits(model, **_ones_call(batch.ids))
        metric = logit_diff(logits, batch.correct, batch.wrong)  # rows are independent
        keys = list(probe.probes)
        grads = torch.autograd.grad(metric.sum(), [probe.probes[k] for k in keys])
    grad = dict(zip(keys, grads, strict=True))
    n, length = batch.ids.shape
    first = batch.first_difference()
    before = torch.arange(length, device=first.device)[None, :] < first[:, None]  # [batch, T]
    out: Scores = {}
    for site in sites:
        rows = []
        for layer in layers:
            delta = corrupted[(layer, site)] - probe.values[(layer, site)]
            rows.append((delta * grad[(layer, site)]).sum(-1).masked_fill(before, 0.0))
        out[site] = torch.stack(rows, dim=1).float().cpu()  # [batch, layers, T]
    return out


# ------------------------------------------------------------------------------ DLA
def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last layer's output before the unembedding, from the sites table
    (``arch_row(model).norms.final``)."""
    return model.get_submodule(arch_row(model).norms.final)


@dataclass
class NormLinearisation:
    """A final norm ``y = g * P(x) / sigma(x) + b`` measured by probing it.

    Attributes:
        gain: ``[d_model]`` the gain ``g`` (``1 + w`` for Gemma).
        bias: ``[d_model]`` the bias ``b`` (0 for RMSNorm).
        centers: True for LayerNorm (``P`` subtracts the mean), False for RMSNorm.
    """

    gain: Tensor
    bias: Tensor
    centers: bool

    def project(self, v: Tensor) -> Tensor:
        """``P(v)`` over the last axis."""
        return v - v.mean(-1, keepdim=True) if self.centers else v

    def scale(self, norm: nn.Module, x: Tensor) -> Tensor:
        """``[rows]`` the scale ``sigma`` the norm divides the rows of ``x [rows, d]`` by."""
        y = norm(x).float() - self.bias  # g * P(x) / sigma
        gp = self.gain * self.project(x.float())
        return (gp * gp).sum(-1) / (gp * y).sum(-1)


@torch.no_grad()
def probe_norm(norm: nn.Module, d_model: int, like: Tensor) -> NormLinearisation:
    """Measure a RMSNorm / LayerNorm's gain, bias and kind by calling it on probe vectors.

    Zero-mean probes ``v`` of +-1 (and one 0 when ``d_model`` is odd) scaled by ``c`` give
    ``N(c v) - N(0) = g * v / rms(v)`` for both kinds (the epsilon is negligible against ``c^2``);
    a constant vector is mapped to the bias by LayerNorm only.
    """
    c = 1e3
    dtype, device = like.dtype, like.device
    bias = norm(torch.zeros(1, d_model, dtype=dtype, device=device))[0].float()
    alternating = torch.tensor([(-1.0) ** i for i in range(d_model)], device=device)
    if d_model % 2 == 0:
        probes = [alternating]
    else:
        head = alternating.clone()
        head[-1] = 0.0
        tail = torch.roll(head, 1)
        probes = [head, tail]
    gain = torch.zeros(d_model, device=device)
    for v in probes:
        r = v.pow(2).mean().sqrt()
        out = norm((c * v).to(dtype)[None])[0].float() - bias
        nz = v != 0
        gain[nz] = (out * r / v)[nz]
    const = norm(torch.full((1, d_model), c, dtype=dtype, device=device))[0].float() - bias
    centers = bool(const.abs().max() <= 1e-4 * max(1.0, float(gain.abs().max())))
    return NormLinearisation(gain=gain, bias=bias, centers=centers)


def unembedding_direction(model: nn.Module, correct: Tensor, wrong: Tensor) -> Tensor:
    """``[batch, d_model]`` ``W_U[correct] - W_U[wrong]`` (rows of the output embedding)."""
    weight = loaded_tensor(model.get_output_embeddings())  # [vocab, d_model]
    return (weight[correct] - weight[wrong]).float()


@torch.no_grad()
def dla_scores(
    model: nn.Module,
    batch: PromptBatch,
    sites: Sequence[str],
    layers: Sequence[int] | None = None,
) -> Scores:
    """Direct logit attribution: ``site -> [batch, layers, T]``, nonzero at the last position only
    (see the module docstring)."""
    sites = check_attribution_sites(sites)
    layers = attribution_layers(model, layers)
    dims = model_dims(model)
    last_layer = dims.num_layers - 1
    points = [(layer, site) for layer in layers for site in sites]
    with record(model, list(dict.fromkeys([*points, (last_layer, "resid_post")]))) as acts:
        last_token_logits(model, **_ones_call(batch.ids))
    norm = final_norm(model)
    final_in = acts[(last_layer, "resid_post")][:, -1]  # [batch, d] the final norm's input
    lin = probe_norm(norm, dims.d_model, final_in)
    sigma = lin.scale(norm, final_in)  # [batch]
    u = lin.project(lin.gain * unembedding_direction(model, batch.correct, batch.wrong))
    u = u / sigma[:, None]  # [batch, d]
    n, length = batch.ids.shape
    out: Scores = {}
    for site in sites:
        scores = torch.zeros(n, len(layers), length)
        for i, layer in enumerate(layers):
            scores[:, i, -1] = (acts[(layer, site)][:, -1].float() * u).sum(-1).cpu()
        out[site] = scores
    return out


# ------------------------------------------------------------------------------ dispatch
def attribution_scores(
    model: nn.Module,
    batch: dict[str, Any],
    method: str,
    sites: Sequence[str] = ("attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    chunk_size: int = 128,
    progress: bool = False,
) -> Scores:
    """Per-example scores ``site -> [batch, layers, T]`` of one contrastive batch.

    Args:
        model: the frozen causal LM (any architecture of the sites table).
        batch: a contrastive batch (``input_ids``, ``attention_mask``, ``correct_id``,
            ``wrong_id``; ``corrupted_input_ids`` / ``corrupted_attention_mask`` for patching).
        method: ``actpatch``, ``attrpatch`` or ``dla``.
        sites: sites to score (``resid_post``, ``attn_out``, ``mlp_out``).
        layers: layers to score; ``None`` = all.
        chunk_size: patched rows per forward call (``actpatch``).
        progress: show a progress bar (``actpatch``).
    """
    check_method(method)
    sites = check_attribution_sites(sites)
    device = input_device(model)
    on_device = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    pb = prompt_batch(on_device, method in NEEDS_CORRUPTED, method)
    if method == "actpatch":
        return actpatch_scores(model, pb, sites, layers, chunk_size, progress)
    if method == "attrpatch":
        return attrpatch_scores(model, pb, sites, layers)
    return dla_scores(model, pb, sites, layers)
