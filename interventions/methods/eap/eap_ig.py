"""EAP-IG attribution graphs (Edge Attribution Patching with Integrated Gradients).

Hanna et al. (2024) score every edge ``u -> v`` of a transformer's computational graph by how much
it carries the difference between a *clean* and a *corrupted* prompt into a metric ``L``; A2A
(Eq. 1) aggregates these scores into layer rankings.  Here ``L`` is the logit difference
``logit(target) - logit(foil)`` at each prompt's last real token, and

    score(u, v) = (z_u(clean) - z_u(corrupted)) . 1/m sum_{k=1..m} dL/d in_v (x_k),
    x_k = corrupted + (k/m) (clean - corrupted)        (interpolated input embeddings)

where ``z_u`` is what node ``u`` adds to the residual stream, ``in_v`` is the residual stream
node ``v`` reads, and the dot product runs over token positions and ``d_model``.

**The graph.**  Nodes, in forward order: ``"input"`` (the embedding, i.e. the residual stream
entering layer 0; for GPT-2 this includes the position embedding, which is equal in both runs),
every attention head ``"a{l}.h{h}"``, every MLP ``"m{l}"`` and ``"logits"``.  Every node but the
logits writes to the residual stream (the rows of the score matrix); every node but the input
reads from it through one or more *inputs* (the columns):

* block level (default): ``"a{l}"`` (the input of layer ``l``'s attention pre-norm, shared by all
  its heads), ``"m{l}"`` (the input of the MLP pre-norm) and ``"logits"`` (the input of the final
  norm);
* ``per_head_inputs=True``: as in EAP-IG, each head reads its query, key and value through its own
  copy of the residual stream: ``"a{l}.h{h}<q>"``, ``"a{l}.h{h}<k>"``, ``"a{l}.h{h}<v>"``.  With
  grouped-query attention a key/value projection is shared by a group of query heads, so there is
  one key and one value input per key-value head: ``"a{l}.kv{g}<k>"``, ``"a{l}.kv{g}<v>"``.

An edge ``u -> v`` exists when ``u`` writes before ``v`` reads: the embedding feeds everything,
the attention of layer ``l`` feeds the MLP of layer ``l`` and everything after it.  GPT-NeoX with
``use_parallel_residual`` runs attention and MLP of a layer on the same residual stream, so there
is no edge between them.  Scores of pairs that are not edges are NaN.

**Node outputs.**  A head's output is its slice of the output projection's input times the
matching columns of ``W_O``.  The output projection's bias belongs to no head: it is the same in
the clean and corrupted runs, so it cancels in ``z(clean) - z(corrupted)``.  Gemma 2/3 normalise
the attention output (``post_attention_layernorm``) before adding it to the residual stream, which
makes head outputs interact; we *linearise* the norm around each run: a head's output is its
``W_O`` contribution times the norm's per-position scale ``rsqrt(mean(o^2) + eps) * (1 + w)``
computed from the whole attention output ``o`` of that run (the way TransformerLens folds norm
scales).  The heads of a layer then sum exactly to the block's output in each run, so the edge
scores of a layer's heads still add up to the block's.  For Gemma's MLP, the node output is the
post-norm's output (the whole block), so nothing is approximated there.

**Input gradients.**  A pre-hook on each pre-norm replaces its input by a copy, so the gradient of
that copy flows only through the block (not through the skip connection).  Per-head inputs use
the gradient at the q/k/v projection outputs: a head's rows of that gradient, multiplied by its
rows of the projection weight, give the cotangent at the pre-norm's output, and the pre-norm's
vector-Jacobian product maps it back to the residual stream.  This works for separate
(Llama family, Gemma) and fused (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) projections.

**Cost.**  One clean and one corrupted forward pass (node outputs) plus ``steps`` forward+backward
passes on interpolated embeddings (all input gradients at once); every edge score is then one
contraction ``[upstream, pos * d_model] @ [pos * d_model, inputs]`` per example.

The model is read only through :mod:`interventions.core.sites`: the layers and the ``attn_z`` and
``mlp_out`` sites for node outputs; the row's :class:`~interventions.core.sites.Norms` (pre-norms, final
norm, Gemma's attention post-norm), :class:`~interventions.core.sites.QKVProjections` (per-head inputs)
and ``parallel_residual`` for inputs and edges; :class:`~interventions.core.sites.ModelDims` for the
numbers of heads and key-value heads.  A new architecture therefore needs only its row in
:data:`interventions.core.sites.ARCHITECTURES`; a row with ``qkv=None`` supports block-level inputs only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from interventions.core.dispatch import input_device, loaded_tensor
from interventions.core.hooks import PositionContext, attach, last_token_logits
from interventions.core.sites import (
    ArchRow,
    QKVProjections,
    arch_row,
    layers,
    model_dims,
    site_module,
)
from interventions.methods.eap.graph import AttributionGraph, graph_layout

# --------------------------------------------------------------------------------------------
# Model access helpers (everything per-family comes from interventions.core.sites)
# --------------------------------------------------------------------------------------------


def _weight_out_in(module: nn.Module) -> Tensor:
    """A projection's weight as ``[out_features, in_features]`` (``nn.Linear`` or GPT-2 Conv1D)."""
    if isinstance(module, nn.Linear):
        return loaded_tensor(module)
    if isinstance(module, Conv1D):
        return loaded_tensor(module).t()
    raise TypeError(f"Expected nn.Linear or Conv1D, got {type(module).__name__}.")


def _qkv_rows(
    qkv: QKVProjections, num_heads: int, num_kv: int, head_dim: int
) -> list[tuple[int, Tensor]]:
    """For each per-head input in the order of :func:`_layout` (q heads, k heads, v heads): the
    index of its projection module in ``qkv.paths`` and its ``[head_dim]`` output rows."""
    out: list[tuple[int, Tensor]] = []
    for kind, count in (("q", num_heads), ("k", num_kv), ("v", num_kv)):
        for h in range(count):
            module, rows = qkv.head_rows(kind, h, num_heads, num_kv, head_dim)
            out.append((module, torch.tensor(rows)))
    return out


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


@dataclass
class _Capture:
    """What one forward call left behind (filled by the hooks of :func:`_probe`)."""

    resid0: Tensor | None = None  # [batch, seq, d_model]
    attn_z: dict[int, Tensor] = field(default_factory=dict)  # [batch, seq, heads * head_dim]
    post_norm_in: dict[int, Tensor] = field(default_factory=dict)  # Gemma: [batch, seq, d]
    post_norm_out: dict[int, Tensor] = field(default_factory=dict)
    mlp_out: dict[int, Tensor] = field(default_factory=dict)  # [batch, seq, d_model]
    attn_in: dict[int, Tensor] = field(default_factory=dict)  # pre-norm input copies
    mlp_in: dict[int, Tensor] = field(default_factory=dict)
    final_in: Tensor | None = None
    qkv_out: dict[int, list[Tensor]] = field(default_factory=dict)  # projection outputs


class _CaptureEdit:
    """The EAP-IG reads of one forward call, as an edit for :func:`attach` (the one hook system).

    ``record`` keeps (detached) the input of layer 0 and every node output.  ``grad`` replaces
    the residual stream entering layer 0 by ``resid0`` and keeps the tensors whose gradients are
    the input gradients: a copy of each pre-norm input (the copy is what the block reads, so its
    gradient is that block's alone), or the q/k/v projection outputs for per-head inputs.
    """

    records = True  # inside a layer it only reads (and copies): activation checkpointing's
    # recomputation skips it, so the captured tensors stay those of the forward pass

    def __init__(
        self,
        points: list[tuple[int, str]],
        mode: Literal["record", "grad"],
        per_head: bool,
        resid0: Tensor | None,
    ) -> None:
        self._points = points
        self.mode = mode
        self.per_head = per_head
        self.resid0 = resid0
        self.cap = _Capture()

    def points(self) -> list[tuple[int, str]]:
        return self._points

    def prepare(self, ctx: PositionContext, beta: Tensor) -> None:
        return None

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        cap = self.cap
        if site == "layer_in":
            if self.mode == "grad":
                return self.resid0
            cap.resid0 = h.detach()
        elif site == "attn_z":
            cap.attn_z[layer] = h.detach()
        elif site == "mlp_out":
            cap.mlp_out[layer] = h.detach()
        elif site == "attn_post_in":
            cap.post_norm_in[layer] = h.detach()
        elif site == "attn_post_out":
            cap.post_norm_out[layer] = h.detach()
        elif site == "resid_pre" and self.per_head:
            cap.attn_in[layer] = h.detach()
        elif site in ("resid_pre", "resid_mid", "resid_final"):
            x = h.clone()
            if site == "resid_final":
                cap.final_in = x
            else:
                (cap.attn_in if site == "resid_pre" else cap.mlp_in)[layer] = x
            return x
        elif site.startswith("qkv"):
            cap.qkv_out[layer][int(site.removeprefix("qkv"))] = h
        return h


@contextmanager
def _probe(
    model: nn.Module, mode: Literal["record", "grad"], per_head: bool, resid0: Tensor | None = None
) -> Iterator[_Capture]:
    """The reads of :class:`_CaptureEdit` for the forward calls inside the block; the points
    (norm inputs, q/k/v outputs, Gemma's post-norm) come from the sites table."""
    row = arch_row(model)
    num_layers = len(layers(model))
    points: list[tuple[int, str]] = [(0, "layer_in")]
    for layer in range(num_layers):
        if mode == "record":
            z_side, mlp_side = (
                site_module(model, layer, "attn_z")[1],
                site_module(model, layer, "mlp_out")[1],
            )
            if (z_side, mlp_side) != ("input", "output"):
                raise RuntimeError(
                    "eap expects attn_z on the input side of the output projection and "
                    f"mlp_out on a module's output side; the sites table has {z_side!r} and "
                    f"{mlp_side!r}. Update interventions.methods.eap.eap_ig._probe with the table."
                )
            points += [(layer, "attn_z"), (layer, "mlp_out")]
            if row.norms.attn_post is not None:
                points += [(layer, "attn_post_in"), (layer, "attn_post_out")]
            continue
        points.append((layer, "resid_pre"))
        if per_head:
            paths = row.qkv.paths if row.qkv is not None else ()
            points += [(layer, f"qkv{j}") for j in range(len(paths))]
        points.append((layer, "resid_mid"))
    if mode == "grad":
        points.append((num_layers, "resid_final"))
    edit = _CaptureEdit(points, mode, per_head, resid0)
    if per_head and mode == "grad":
        paths = row.qkv.paths if row.qkv is not None else ()
        edit.cap.qkv_out = {layer: [None] * len(paths) for layer in range(num_layers)}  # type: ignore[misc]
    with attach(model, edit):
        yield edit.cap


# --------------------------------------------------------------------------------------------
# EAP-IG
# --------------------------------------------------------------------------------------------


def logit_difference(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    target_ids: Tensor,
    foil_ids: Tensor,
) -> Tensor:
    """``[batch]`` logit(target) - logit(foil) at each row's last real token.

    Position ids are counted on real tokens, so the padding side does not change the result
    (see :func:`interventions.core.hooks.last_token_logits`).
    """
    last = last_token_logits(model, input_ids, attention_mask)  # [batch, vocab]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return last[rows, target_ids] - last[rows, foil_ids]


def _as_ids(x: Tensor | Sequence[int], batch: int, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(x, device=device).long().reshape(-1)
    if t.numel() != batch:
        raise ValueError(
            f"{name} must hold one token id per example ({batch}), got shape "
            f"{tuple(torch.as_tensor(x).shape)}."
        )
    return t


def _align_pairs(
    clean_ids: Tensor, corrupted_ids: Tensor, clean_mask: Tensor, corrupted_mask: Tensor
) -> Tensor:
    """``corrupted_ids`` laid out on ``clean_mask``'s columns (same real-token count per row)."""
    if clean_ids.dim() != 2 or corrupted_ids.dim() != 2:
        raise ValueError(
            "clean_ids and corrupted_ids must be [batch, seq] token ids, got shapes "
            f"{tuple(clean_ids.shape)} and {tuple(corrupted_ids.shape)}."
        )
    if clean_ids.shape[0] != corrupted_ids.shape[0]:
        raise ValueError(
            f"clean_ids has {clean_ids.shape[0]} rows but corrupted_ids has "
            f"{corrupted_ids.shape[0]}; pass one corrupted prompt per clean prompt."
        )
    for ids, mask, name in (
        (clean_ids, clean_mask, "clean"),
        (corrupted_ids, corrupted_mask, "corrupted"),
    ):
        if mask.shape != ids.shape:
            raise ValueError(
                f"The {name} attention mask has shape {tuple(mask.shape)} but the {name} ids "
                f"have shape {tuple(ids.shape)}."
            )
    n_clean, n_corr = clean_mask.sum(1), corrupted_mask.sum(1)
    bad = torch.nonzero(n_clean != n_corr).flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(
            f"Clean and corrupted prompts must have the same number of real tokens, but example "
            f"{i} has {int(n_clean[i])} clean and {int(n_corr[i])} corrupted tokens "
            f"({len(bad)} example(s) differ: {bad[:10]}). EAP-IG compares activations position "
            "by position: rephrase or re-tokenise the pairs so their lengths match."
        )
    if bool((n_clean == 0).any()):
        raise ValueError("Every example needs at least one real token (a row of the mask is 0).")
    aligned = clean_ids.clone()
    aligned[clean_mask] = corrupted_ids[corrupted_mask].to(aligned.device)
    return aligned


def eap_ig(
    model: nn.Module,
    clean_ids: Tensor,
    corrupted_ids: Tensor,
    target_ids: Tensor | Sequence[int],
    foil_ids: Tensor | Sequence[int],
    *,
    clean_mask: Tensor | None = None,
    corrupted_mask: Tensor | None = None,
    steps: int = 5,
    per_head_inputs: bool = False,
    progress: bool = False,
) -> AttributionGraph:
    """Score every edge of ``model``'s attribution graph with EAP-IG (A2A Eq. 1).

    Args:
        model: a Hugging Face causal LM in the sites table, in eval mode.
        clean_ids: ``[batch, seq]`` token ids of the clean prompts (x+).
        corrupted_ids: ``[batch, seq']`` token ids of the corrupted prompts (x-); each must have
            as many real tokens as its clean prompt (padding side and width may differ).
        target_ids: ``[batch]`` the token whose logit the clean prompt raises (y+).
        foil_ids: ``[batch]`` the contrasting token (y-); L = logit(target) - logit(foil) at
            the last real token.
        clean_mask: ``[batch, seq]`` attention mask of the clean prompts (1 = real token);
            ``None`` = no padding.
        corrupted_mask: ``[batch, seq']`` attention mask of the corrupted prompts; ``None`` =
            ``clean_mask`` if the shapes agree, else no padding.
        steps: number m of integration steps (the path points are k/m, k = 1..m).
        per_head_inputs: score each head's q/k/v input separately (EAP-IG's graph) instead of
            the block-level attention input.
        progress: show a tqdm bar over the integration steps.

    Returns:
        The :class:`AttributionGraph` with batch-mean and per-example scores.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"steps must be a positive integer (the number m of IG steps), got {steps!r}."
        )
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "eap_ig needs gradients but was called under torch.inference_mode(); call it outside "
            "(in Lightning, build the Trainer with inference_mode=False)."
        )
    if model.training:
        raise ValueError("eap_ig needs the model in eval mode (dropout off): call model.eval().")
    row = arch_row(model)
    if per_head_inputs and row.qkv is None:
        raise ValueError(
            f"Per-head q/k/v inputs are not available for {model.config.model_type!r}: its row "
            f"({row.family!r}) in interventions.core.sites.ARCHITECTURES names no q/k/v projections "
            "(qkv=None). Call eap_ig(..., per_head_inputs=False) to score block-level attention "
            "inputs, or add a QKVProjections to the row."
        )
    dims = model_dims(model)
    num_kv = dims.num_kv_heads or dims.num_heads
    parallel = row.parallel_residual(model.config)
    device = input_device(model)

    clean_ids = clean_ids.to(device)
    corrupted_ids = corrupted_ids.to(device)
    if clean_mask is None:
        clean_mask = torch.ones_like(clean_ids)
    if corrupted_mask is None:
        same = corrupted_ids.shape == clean_ids.shape
        corrupted_mask = clean_mask if same else torch.ones_like(corrupted_ids)
    clean_mask = clean_mask.to(device).bool()
    corrupted_mask = corrupted_mask.to(device).bool()
    corrupted_ids = _align_pairs(clean_ids, corrupted_ids, clean_mask, corrupted_mask)
    batch = clean_ids.shape[0]
    target = _as_ids(target_ids, batch, "target_ids", device)
    foil = _as_ids(foil_ids, batch, "foil_ids", device)
    mask = clean_mask.long()

    layout = graph_layout(dims.num_layers, dims.num_heads, num_kv, parallel, per_head_inputs)

    # 1. Node outputs on the clean and corrupted prompts.
    with torch.no_grad():
        with _probe(model, "record", per_head_inputs) as clean:
            metric_clean = logit_difference(model, clean_ids, mask, target, foil)
        with _probe(model, "record", per_head_inputs) as corrupted:
            metric_corrupted = logit_difference(model, corrupted_ids, mask, target, foil)
        delta = _node_output_difference(model, row, dims.num_heads, clean, corrupted)
        delta = delta * clean_mask[None, :, :, None]  # [upstream, batch, seq, d_model]

    # 2. Input gradients averaged along the path corrupted -> clean (k/m, k = 1..m).
    assert clean.resid0 is not None and corrupted.resid0 is not None
    grad_sum = torch.zeros(
        len(layout.inputs), *clean.resid0.shape, dtype=torch.float32, device=device
    )  # [inputs, batch, seq, d_model]
    qkv_rows = (
        _qkv_rows(row.qkv, dims.num_heads, num_kv, dims.head_dim) if row.qkv is not None else []
    )
    with torch.enable_grad():
        for k in tqdm(range(1, steps + 1), desc="EAP-IG", disable=not progress):
            alpha = k / steps
            resid0 = corrupted.resid0 + alpha * (clean.resid0 - corrupted.resid0)
            resid0 = resid0.detach().requires_grad_(True)
            with _probe(model, "grad", per_head_inputs, resid0) as cap:
                metric = logit_difference(model, clean_ids, mask, target, foil)
            grad_sum += _input_gradients(model, row, cap, metric, qkv_rows)

    # 3. All edge scores at once: [batch, upstream, inputs].
    example_scores = torch.einsum("ubsd,vbsd->buv", delta, grad_sum) / steps
    no_edge = ~layout.edge_mask().to(device)
    example_scores = example_scores.masked_fill(no_edge, float("nan"))
    return AttributionGraph(
        nodes=layout.nodes,
        node_layers=layout.node_layers,
        inputs=layout.inputs,
        input_nodes=layout.input_nodes,
        scores=example_scores.mean(0),
        example_scores=example_scores,
        metric_clean=metric_clean.float(),
        metric_corrupted=metric_corrupted.float(),
        steps=steps,
        architecture=str(model.config.model_type),
        per_head_inputs=per_head_inputs,
    )


def _head_outputs(
    model: nn.Module, row: ArchRow, layer: int, num_heads: int, cap: _Capture
) -> Tensor:
    """``[heads, batch, seq, d_model]`` what each head of ``layer`` adds to the residual stream
    (bias excluded; Gemma: linearised through the post-attention norm, see the module doc)."""
    o_proj, _ = site_module(model, layer, "attn_z")
    w = _weight_out_in(o_proj).float()  # [d_model, heads * head_dim]
    z = cap.attn_z[layer].float()  # [batch, seq, heads * head_dim]
    batch, seq, _ = z.shape
    heads = torch.einsum(
        "bshk,dhk->hbsd", z.view(batch, seq, num_heads, -1), w.view(w.shape[0], num_heads, -1)
    )
    if row.norms.attn_post is None:
        return heads
    norm = layers(model)[layer].get_submodule(row.norms.attn_post)
    o = cap.post_norm_in[layer].float()  # [batch, seq, d_model]
    gain = 1.0 + loaded_tensor(norm).float()
    scale = torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + norm.eps) * gain
    heads = heads * scale
    # The linearisation must reproduce the block output exactly (up to the o_proj bias).
    total = heads.sum(0)
    bias = loaded_tensor(o_proj, "bias")
    if bias is not None:
        total = total + bias.float() * scale
    expected = cap.post_norm_out[layer].float()
    tol = max(1e-3, 4 * torch.finfo(cap.post_norm_out[layer].dtype).eps)  # model dtype rounding
    if not torch.allclose(total, expected, rtol=tol, atol=tol * float(expected.abs().max())):
        raise RuntimeError(
            f"Layer {layer}: linearising {row.norms.attn_post} as x * rsqrt(mean(x^2) + eps) * "
            "(1 + weight) does not reproduce its output; this norm is not Gemma-style. Add a "
            "linearisation for it in interventions.methods.eap.eap_ig._head_outputs."
        )
    return heads


def _node_output_difference(
    model: nn.Module, row: ArchRow, num_heads: int, clean: _Capture, corrupted: _Capture
) -> Tensor:
    """``[num_upstream, batch, seq, d_model]`` z_u(clean) - z_u(corrupted) in float32, in layout
    order."""
    assert clean.resid0 is not None and corrupted.resid0 is not None
    parts = [(clean.resid0.float() - corrupted.resid0.float())[None]]
    device = parts[0].device  # layers split over devices: gathered where layer 0 reads
    for layer in range(len(layers(model))):
        heads = _head_outputs(model, row, layer, num_heads, clean) - _head_outputs(
            model, row, layer, num_heads, corrupted
        )
        parts.append(heads.to(device))
        mlp = clean.mlp_out[layer].float() - corrupted.mlp_out[layer].float()
        parts.append(mlp[None].to(device))
    return torch.cat(parts)


def _input_gradients(
    model: nn.Module,
    row: ArchRow,
    cap: _Capture,
    metric: Tensor,
    qkv_rows: list[tuple[int, Tensor]],
) -> Tensor:
    """``[num_inputs, batch, seq, d_model]`` dL/d in_v for every input, in layout order.

    Examples are independent, so one backward of ``metric.sum()`` gives every row's gradient.
    """
    num_layers = len(layers(model))
    per_head = bool(cap.qkv_out)
    wanted: list[Tensor] = []
    for layer in range(num_layers):
        wanted += cap.qkv_out[layer] if per_head else [cap.attn_in[layer]]
        wanted.append(cap.mlp_in[layer])
    assert cap.final_in is not None
    wanted.append(cap.final_in)
    grads = torch.autograd.grad(metric.sum(), wanted, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wanted, grads)]

    out: list[Tensor] = []
    i = 0
    for layer in range(num_layers):
        if per_head:
            block = layers(model)[layer]
            modules = [block.get_submodule(p) for p in (row.qkv.paths if row.qkv else ())]
            n = len(modules)
            out.append(
                _per_head_input_grads(
                    block.get_submodule(row.norms.attn),
                    cap.attn_in[layer],
                    grads[i : i + n],
                    [_weight_out_in(m) for m in modules],
                    qkv_rows,
                )
            )
            i += n
        else:
            out.append(grads[i][None])
            i += 1
        out.append(grads[i][None])
        i += 1
    out.append(grads[i][None])
    return torch.cat([g.float().to(metric.device) for g in out])


def _per_head_input_grads(
    norm: nn.Module,
    x: Tensor,
    proj_grads: Sequence[Tensor],
    weights: Sequence[Tensor],
    rows: list[tuple[int, Tensor]],
) -> Tensor:
    """``[num_head_inputs, batch, seq, d_model]`` gradient at each head's private copy of the
    residual stream: its rows of dL/d(projection output) times its rows of the weight give the
    cotangent at the pre-norm's output; the pre-norm's VJP at ``x`` maps it to its input.

    Args:
        norm: the attention pre-norm.
        x: ``[batch, seq, d_model]`` its input.
        proj_grads: per projection module, ``[batch, seq, out_features]`` dL/d output.
        weights: per projection module, ``[out_features, d_model]``.
        rows: per head input, (module index, ``[head_dim]`` output rows).
    """
    cotangents = []  # each [n, batch, seq, d_model]
    for m, (g, w) in enumerate(zip(proj_grads, weights)):
        idx = torch.stack([r for mod, r in rows if mod == m]).to(g.device)  # [n, head_dim]
        cotangents.append(torch.einsum("bsnk,nkd->nbsd", g[..., idx], w[idx]))
    # _qkv_rows lists q heads, then k heads, then v heads; they map to modules 0, 1, 2 (separate
    # projections) or all to module 0 (fused), so concatenating per module keeps that order.
    c = torch.cat(cotangents)  # [num_head_inputs, batch, seq, d_model]
    n = c.shape[0]
    with torch.enable_grad():
        xs = x.detach().unsqueeze(0).expand(n, *x.shape).reshape(n * x.shape[0], *x.shape[1:])
        xs = xs.clone().requires_grad_(True)
        y = norm.forward(xs)  # .forward: bypass the hooks
        (g,) = torch.autograd.grad(y, xs, c.reshape(xs.shape).to(y.dtype))
    return g.reshape(n, *x.shape)
