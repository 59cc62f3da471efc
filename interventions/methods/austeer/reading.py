"""AUSteer: reading the atomic units of each row at one token (see :mod:`.units`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from interventions.core.hooks import (
    PositionContext,
    attach,
    keep_last_column,
    last_token_index,
    position_ids,
)
from interventions.core.sites import (
    check_layer,
    check_sites,
    model_dims,
)
from interventions.edits import EditState

Unit = tuple[int, str, int]
"""One atomic unit: ``(layer, site, dim)``."""


# ----------------------------------------------------------------------------- activations
class _ColumnReader:
    """An edit that changes nothing and keeps each row's activation at one column per point."""

    def __init__(self, points: Sequence[tuple[int, str]], columns: Tensor) -> None:
        self._points = list(points)
        self.columns = columns  # [batch] column of each row's read token
        self.values: dict[tuple[int, str], Tensor] = {}

    def points(self) -> list[tuple[int, str]]:
        return self._points

    def prepare(self, ctx: PositionContext, beta: Tensor) -> EditState | None:
        return None

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        rows = torch.arange(h.shape[0], device=h.device)
        self.values[(layer, site)] = h.detach()[rows, self.columns.to(h.device)].float()
        return h


@torch.no_grad()
def au_activations(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    sites: str | Sequence[str],
    layers: Sequence[int] | None = None,
    read_offset: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every AU's activation at one token of each row (by default its last real token), from one
    forward pass.

    Only the read column is kept while the model runs, so memory does not grow with the sequence
    length.  Position ids and the read token are counted on real tokens, so left and right
    padding give the same values.

    Args:
        model: a Hugging Face causal LM whose architecture is in the sites table.
        input_ids: ``[batch, seq]`` token ids.
        attention_mask: ``[batch, seq]`` 1 on real tokens (every row needs at least one; the
            real tokens of a row are contiguous, as left or right padding leaves them).
        sites: site names, e.g. ``["mlp_out"]``, or one name.
        layers: layers to read; ``None`` = every layer.
        read_offset: ``[batch]`` how many real tokens after the read token each row has
            (0: its last token, the default; the pair batches of
            ``datamodules.commonsense.PairCollator`` carry it as ``pos_read_offset`` /
            ``neg_read_offset``).

    Returns:
        ``site -> [batch, L, width]`` float32 with ``L`` the model's number of layers (row = layer
        number); rows of layers not in ``layers`` are zero, so their AUs never show a momentum
        (pass the same ``layers`` to :func:`top_k_units`).
    """
    dims = model_dims(model)
    if not sites:
        raise ValueError("au_activations needs at least one site, e.g. ['mlp_act'].")
    sites = check_sites(sites)  # one name or a list
    read = _check_layers(layers, dims.num_layers)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {list(input_ids.shape)} and attention_mask {list(attention_mask.shape)} "
            "must have the same [batch, seq] shape."
        )
    lengths = attention_mask.sum(1)  # [batch] real tokens per row
    empty = (lengths == 0).nonzero()[:, 0].tolist()
    if empty:
        raise ValueError(f"Rows {empty} of the batch have no real token (all-zero attention mask).")
    columns = last_token_index(attention_mask)  # [batch]
    if read_offset is not None:
        offset = read_offset.to(columns.device).long()
        if offset.shape != columns.shape:
            raise ValueError(
                f"read_offset has shape {list(read_offset.shape)}; it needs one value per row, "
                f"[{columns.shape[0]}]."
            )
        bad = ((offset < 0) | (offset >= lengths)).nonzero()[:, 0].tolist()
        if bad:
            raise ValueError(
                f"read_offset of rows {bad} is {offset[bad].tolist()}, outside their "
                f"{lengths[bad].tolist()} real tokens: an offset counts real tokens after the "
                "read one (0 = the last token)."
            )
        columns = columns - offset
    reader = _ColumnReader([(layer, site) for layer in read for site in sites], columns)
    with attach(model, reader):
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            logits_to_keep=keep_last_column(input_ids),  # logits not needed: skip the unembedding
        )
    batch = input_ids.shape[0]
    out = {}
    for site in sites:
        acts = torch.zeros(batch, dims.num_layers, dims.width(site), device=input_ids.device)
        for layer in read:
            acts[:, layer] = reader.values[(layer, site)]  # [batch, width]
        out[site] = acts  # [batch, L, width]
    return out


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Sorted distinct layer indices (all if ``None``), each checked against ``num_layers``."""
    if layers is None:
        return list(range(num_layers))
    chosen = sorted(set(layers))
    if not chosen:
        raise ValueError("layers is empty; pass None for every layer.")
    for layer in chosen:
        check_layer(layer, num_layers)
    return chosen
