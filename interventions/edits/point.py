"""Parameter modules that edit activations: ActivScalar, SteerVec, DynScalar, AUScale, AUShift.

All share one shape of intervention point, ``layers x sites x positions``, and take ``beta``
(strength and sign) at run time, one value per batch row:

* :class:`ActivScalar` — ``h * (1 + beta * alpha)``, one scalar ``alpha`` per layer x site x
  position (per head for ``attn_z``).
* :class:`SteerVec` — ``h + beta * v``, one vector ``v`` per layer x site x position.
* :class:`DynScalar` — ``h * (1 + beta * alpha(h))`` with ``alpha(h) = g^T h / ||h||`` (per head
  for ``attn_z``), one probe ``g`` per layer x site, shared over positions, so it works on prompts
  of any length.
* :class:`AUScale` — AUSteer's atomic-unit scaling: ``h_i * (1 + beta * gamma_i)`` on the few
  dimensions ``i`` with ``gamma_i != 0`` (one ``gamma`` vector per layer x site), every other
  dimension untouched.
* :class:`AUShift` — the fixed-vector ablation of AUSteer: ``h_i + beta * v_i`` on the dimensions
  with ``v_i != 0``.

Positions (``positions``):

* ``"all"`` — ActivScalar / SteerVec tie one parameter to each of the ``num_positions`` prompt
  positions (prompts of one token length); DynScalar, AUScale and AUShift edit every
  real token, generated ones too.
* ``"last"`` — the last real token of the prompt (and, under generation, every new token).
* a list of ints — these prompt positions; negative ones count from the end of a prompt of
  ``num_positions`` tokens (not for AUScale / AUShift).

Parameters start as ``N(0, init_std)`` noise (the paper uses tiny noise); AUScale and AUShift
default to ``init_std=0`` (nothing steered) and are filled by :mod:`interventions.methods.austeer.module`.
New edit types register in :data:`EDITS` and are then available to the trainer, export and the
CLI.

Precision and devices: the parameters are float32 master weights whatever the backbone's dtype.
:meth:`~PointEdit.apply` computes the edit (``1 + beta * alpha``, ``h + beta * v``, the probe
scalars) in float32 (float64 for a float64 model) from parameters moved to the activation's
device, and returns the activation's dtype: a bfloat16 / float16 backbone sees its own dtype,
small values are not rounded away before they act, and a model split over several devices is
edited where each activation lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from interventions.core.hooks import PositionContext
from interventions.core.sites import ModelDims, check_layer, check_sites

PositionSpec = Literal["all", "last"] | list[int]


@dataclass
class EditState:
    """What one forward call's points share: slot index, on/off mask and beta per row."""

    slot: Tensor  # [batch, seq] long, index into the position axis (0 where off)
    on: Tensor  # [batch, seq] float, 1 where the edit applies
    beta: Tensor  # [batch], or [batch, layers of the edit] for one beta per row and layer


class PointEdit(nn.Module):
    """Base class: intervention points, position handling, parameter bookkeeping.

    Args:
        dims: sizes of the model the edit is for (:func:`interventions.core.sites.model_dims`).
        sites: site names, e.g. ``["attn_out", "mlp_out"]``, or one name (``"attn_out"``).
        layers: layer indices; ``None`` means every layer.
        positions: ``"all"``, ``"last"`` or a list of prompt positions (see module docstring).
        num_positions: prompt token length, needed for position-tied ``"all"`` and negative
            positions.
        init_std: standard deviation of the Gaussian initialisation.
    """

    kind: ClassVar[str] = ""
    position_tied: ClassVar[bool] = True

    def __init__(
        self,
        dims: ModelDims,
        sites: str | Sequence[str],
        layers: Sequence[int] | None = None,
        positions: PositionSpec = "all",
        num_positions: int | None = None,
        init_std: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.sites = check_sites(sites)
        self.layers = list(range(dims.num_layers)) if layers is None else list(layers)
        if not self.layers:
            raise ValueError("An edit needs at least one layer (or layers=None for all).")
        for layer in self.layers:
            check_layer(layer, dims.num_layers)
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"Layers must be distinct, got {self.layers}.")
        self._row = {layer: i for i, layer in enumerate(self.layers)}
        self.positions = positions
        self.num_positions = num_positions
        self.init_std = float(init_std)
        self._slots = self._resolve_positions(positions, num_positions)
        table = torch.full((max(self._slots, default=-1) + 2,), -1, dtype=torch.long)
        for slot, position in enumerate(self._slots):
            table[position] = slot
        self.register_buffer("_table", table, persistent=False)
        self.params = nn.ParameterDict(
            {site: nn.Parameter(self._init(self.param_shape(site))) for site in self.sites}
        )

    # ----------------------------------------------------------------------------- positions
    def _resolve_positions(self, positions: PositionSpec, num_positions: int | None) -> list[int]:
        if positions == "last":
            return []
        if positions == "all":
            if not self.position_tied:
                return []
            if num_positions is None or num_positions < 1:
                raise ValueError(
                    f"{type(self).__name__} with positions='all' ties one parameter to each prompt "
                    "position, so it needs num_positions (the prompt token length, e.g. from a "
                    "fixed_length data module). Use positions='last' or DynScalar for prompts of "
                    "varying length."
                )
            return list(range(num_positions))
        if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions:
            raise ValueError(
                f"positions must be 'all', 'last' or a non-empty list of ints, got {positions!r}."
            )
        resolved = []
        for p in positions:
            if not isinstance(p, int):
                raise ValueError(f"positions must be ints, got {p!r}.")
            if p < 0:
                if num_positions is None:
                    raise ValueError(
                        f"Negative position {p} counts from the end of the prompt and needs "
                        "num_positions (the prompt token length)."
                    )
                p = num_positions + p
                if p < 0:
                    raise ValueError(f"Position {p - num_positions} is before the prompt start.")
            elif num_positions is not None and p >= num_positions:
                raise ValueError(
                    f"Position {p} is out of range for prompts of {num_positions} tokens."
                )
            resolved.append(p)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"positions name the same token twice: {positions}.")
        return resolved

    @property
    def num_slots(self) -> int:
        """Length of the position axis of position-tied parameters."""
        return len(self._slots) if self._slots else 1

    def points(self) -> list[tuple[int, str]]:
        """Every (layer, site) pair this edit touches."""
        return [(layer, site) for layer in self.layers for site in self.sites]

    def check_prompt_lengths(self, lengths: Tensor | Sequence[int]) -> None:
        """Refuse prompts this edit has no parameters for: a position-tied edit with
        ``positions="all"`` (ActivScalar / SteerVec) holds one parameter per position of prompts
        of exactly ``num_positions`` tokens.  Other edits accept any length.

        :meth:`prepare` calls it on every call that starts a prompt (``ctx.prompt_lengths``),
        so ``attach``, generation and every method share this one check; decoding steps are
        not checked (the edit applies at prefill only)."""
        if not (self.position_tied and self.positions == "all"):
            return
        expected = self.num_positions
        if isinstance(lengths, Tensor):
            if not bool((lengths != expected).any()):
                return
            lengths = lengths.tolist()
        wrong = sorted({int(n) for n in lengths if n != expected})
        if wrong:
            raise ValueError(
                f"This {type(self).__name__} ties one parameter to each of {expected} prompt "
                f"positions (it was made for prompts of {expected} tokens), but the prompts have "
                f"{wrong} tokens. Use prompts of {expected} tokens (the "
                "training template's length), or an edit trained with positions='last' / a "
                "DynScalar for prompts of any length."
            )

    def prepare(self, ctx: PositionContext, beta: Tensor) -> EditState:
        """Gather slot indices once per forward call (shared by all points); on a call that
        starts a prompt, refuse prompts of the wrong length (:meth:`check_prompt_lengths`).

        ``on`` and ``beta`` are at least float32 whatever the default dtype (Lightning's
        ``16-true`` sets it to float16 inside ``training_step``)."""
        if ctx.prompt_lengths is not None:
            self.check_prompt_lengths(ctx.prompt_lengths)
        beta = beta.to(torch.promote_types(beta.dtype, torch.float32))
        if self.positions == "last":
            on = ctx.last
            slot = torch.zeros_like(ctx.pos)
        elif self.positions == "all" and not self.position_tied:
            on = ctx.pos >= 0
            slot = torch.zeros_like(ctx.pos)
        else:
            table = self._table.to(ctx.pos.device)
            idx = ctx.pos.clamp(min=-1, max=table.numel() - 1)
            slot = table[idx]  # pos -1 (padding) maps to the table's last entry, which is -1
            on = slot >= 0
            slot = slot.clamp(min=0)
        if beta.dim() == 2 and beta.shape[1] != len(self.layers):
            raise ValueError(
                f"A [batch, layers] beta needs one column per layer of the edit "
                f"({len(self.layers)}: {self.layers}), got {beta.shape[1]} columns."
            )
        return EditState(
            slot=slot,
            on=on.to(beta.dtype),
            beta=beta,
        )

    def beta_at(self, layer: int, state: EditState) -> Tensor:
        """``[batch]`` beta of each row at ``layer`` (the column of a ``[batch, layers]`` beta)."""
        return state.beta[:, self._row[layer]] if state.beta.dim() == 2 else state.beta

    # ----------------------------------------------------------------------------- parameters
    def param_shape(self, site: str) -> tuple[int, ...]:
        """Shape of the parameter tensor for ``site`` (first axis = layers)."""
        raise NotImplementedError

    def _init(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape) * self.init_std

    def num_parameters(self) -> int:
        """Number of learnable values."""
        return sum(p.numel() for p in self.params.values())

    def l1(self) -> Tensor:
        """Sum of absolute parameter values (the minimality penalty)."""
        return sum(p.abs().sum() for p in self.params.values())

    def count_nonnegligible(self, threshold: float = 0.01) -> int:
        """Number of parameters with ``|theta| >= threshold`` (the minimality metric)."""
        return int(sum((p.detach().abs() >= threshold).sum() for p in self.params.values()))

    def check_compatible(self, dims: ModelDims) -> None:
        """Refuse a model whose architecture or sizes differ from those the edit was made for."""
        if dims != self.dims:
            raise ValueError(
                f"This {type(self).__name__} was made for {self.dims.architecture} with "
                f"{self.dims.num_layers} layers, d_model {self.dims.d_model}, "
                f"{self.dims.num_heads} heads x {self.dims.head_dim}, d_mlp {self.dims.d_mlp}; "
                f"the model is {dims.architecture} with {dims.num_layers} layers, d_model "
                f"{dims.d_model}, {dims.num_heads} heads x {dims.head_dim}, d_mlp {dims.d_mlp}. "
                "Load it into a model of the same architecture and size."
            )

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (without ``dims``)."""
        return dict(
            sites=self.sites,
            layers=self.layers,
            positions=self.positions,
            num_positions=self.num_positions,
            init_std=self.init_std,
        )

    @staticmethod
    def compute_dtype(h: Tensor) -> torch.dtype:
        """The dtype an edit of ``h`` is computed in: float32, or ``h``'s dtype if wider."""
        return torch.promote_types(h.dtype, torch.float32)

    def param_at(self, layer: int, site: str, h: Tensor) -> Tensor:
        """The parameter row of ``(layer, site)`` on ``h``'s device, in :meth:`compute_dtype`."""
        return self.params[site][self._row[layer]].to(device=h.device, dtype=self.compute_dtype(h))

    def coef_at(self, layer: int, state: EditState, h: Tensor) -> Tensor:
        """``[batch, seq]`` beta where the edit is on (0 elsewhere), on ``h``'s device, in
        :meth:`compute_dtype`."""
        like = dict(device=h.device, dtype=self.compute_dtype(h))
        return self.beta_at(layer, state).to(**like)[:, None] * state.on.to(**like)

    def _split_units(self, site: str, h: Tensor) -> Tensor:
        units = self.dims.units(site)
        return h.unflatten(-1, (units, h.shape[-1] // units))  # [batch, seq, units, width/units]

    def _scale(self, layer: int, site: str, h: Tensor, state: EditState, alpha: Tensor) -> Tensor:
        """``h * (1 + beta * alpha)`` where the edit is on; ``alpha`` is ``[batch, seq, units]``
        in :meth:`compute_dtype` on ``h``'s device.  Computed in that dtype, returned in ``h``'s."""
        scale = 1 + self.coef_at(layer, state, h)[..., None] * alpha  # [batch, seq, units]
        hc = h.to(alpha.dtype)
        if scale.shape[-1] == 1:
            return (hc * scale).to(h.dtype)  # [batch, seq, 1] broadcasts over the width
        return (self._split_units(site, hc) * scale[..., None]).flatten(-2).to(h.dtype)


class ActivScalar(PointEdit):
    """Activation scaling: ``h * (1 + beta * alpha)``; one scalar per point (per head on attn_z)."""

    kind = "activscalar"

    def param_shape(self, site: str) -> tuple[int, ...]:
        return (len(self.layers), self.num_slots, self.dims.units(site))

    def apply(self, layer: int, site: str, h: Tensor, state: EditState) -> Tensor:
        alpha = self.param_at(layer, site, h)  # [slots, units]
        return self._scale(layer, site, h, state, alpha[state.slot.to(h.device)])


class SteerVec(PointEdit):
    """Additive steering vectors: ``h + beta * v``; one vector per point."""

    kind = "steervec"

    def param_shape(self, site: str) -> tuple[int, ...]:
        return (len(self.layers), self.num_slots, self.dims.width(site))

    def apply(self, layer: int, site: str, h: Tensor, state: EditState) -> Tensor:
        v = self.param_at(layer, site, h)  # [slots, width]
        shift = self.coef_at(layer, state, h)[..., None] * v[state.slot.to(h.device)]
        return (h.to(v.dtype) + shift).to(h.dtype)


class DynScalar(PointEdit):
    """Dynamic activation scalars: ``alpha = g^T h / ||h||``, one probe ``g`` per layer x site.

    On ``attn_z`` each head has its own probe and scalar.
    """

    kind = "dynscalar"
    position_tied = False
    eps: ClassVar[float] = 1e-6

    def param_shape(self, site: str) -> tuple[int, ...]:
        units = self.dims.units(site)
        return (len(self.layers), units, self.dims.width(site) // units)

    def scalars(self, layer: int, site: str, h: Tensor) -> Tensor:
        """``[batch, seq, units]`` the scalars ``alpha`` the probe assigns to activations ``h``
        (in :meth:`compute_dtype`, on ``h``'s device)."""
        g = self.param_at(layer, site, h)  # [units, width/units]
        hu = self._split_units(site, h.to(g.dtype))
        return (hu * g).sum(-1) / (hu.norm(dim=-1) + self.eps)

    def apply(self, layer: int, site: str, h: Tensor, state: EditState) -> Tensor:
        return self._scale(layer, site, h, state, self.scalars(layer, site, h))


@dataclass
class AUEditState(EditState):
    """:class:`EditState` plus the steered dimensions of every point of an atomic-unit edit."""

    index: dict[tuple[int, str], Tensor]  # (layer, site) -> [n] long, the dims with nonzero value


class _AtomicUnitEdit(PointEdit):
    """Base of the atomic-unit (AU) edits: one value per dimension, zero = not steered.

    The parameter of a site is ``[len(layers), 1, width(site)]``.  Only the dimensions with a
    nonzero value are read and rewritten; every other dimension of the activation is returned
    bit-identical.  The nonzero dimensions are found once per forward call in :meth:`prepare`
    (cheap, and always in step with the current parameter values).

    Args:
        dims: sizes of the model the edit is for (:func:`interventions.core.sites.model_dims`).
        sites: site names, e.g. ``["mlp_out"]`` (AUSteer-FFN's units) or ``["attn_z"]``.
        layers: layer indices; ``None`` means every layer.
        positions: ``"all"`` (every real token of every call, generated tokens too) or
            ``"last"`` (the prompt's last real token and every token generated after it).
        num_positions: unused (accepted so that every edit takes the same arguments).
        init_std: standard deviation of the initial values; the default 0 steers nothing.
    """

    position_tied = False

    def __init__(
        self,
        dims: ModelDims,
        sites: str | Sequence[str],
        layers: Sequence[int] | None = None,
        positions: Literal["all", "last"] = "all",
        num_positions: int | None = None,
        init_std: float = 0.0,
    ) -> None:
        if positions not in ("all", "last"):
            raise ValueError(
                f"{type(self).__name__} steers 'all' real tokens or the 'last' one (and the "
                f"generated tokens after it), got positions={positions!r}."
            )
        super().__init__(dims, sites, layers, positions, num_positions, init_std)

    def param_shape(self, site: str) -> tuple[int, ...]:
        return (len(self.layers), 1, self.dims.width(site))

    def prepare(self, ctx: PositionContext, beta: Tensor) -> AUEditState:
        """Positions as in :meth:`PointEdit.prepare`, plus the nonzero dims of every point."""
        base = super().prepare(ctx, beta)
        index: dict[tuple[int, str], Tensor] = {}
        for site in self.sites:
            values = self.params[site].detach()[:, 0]  # [layers, width]
            nonzero = values.nonzero()  # [n, 2] (row, dim), sorted by row then dim
            counts = (values != 0).sum(1).tolist()  # [layers]
            for layer, steered in zip(self.layers, nonzero[:, 1].split(counts), strict=True):
                index[(layer, site)] = steered
        return AUEditState(slot=base.slot, on=base.on, beta=base.beta, index=index)

    def _combine(self, selected: Tensor, coef: Tensor, values: Tensor) -> Tensor:
        """The new values of the steered dims.

        ``selected [batch, seq, n]`` their current values, ``coef [batch, seq, 1]`` beta where the
        edit is on (0 elsewhere), ``values [n]`` the edit's values for these dims.
        """
        raise NotImplementedError

    def apply(self, layer: int, site: str, h: Tensor, state: AUEditState) -> Tensor:
        idx = state.index[(layer, site)]  # [n]
        if idx.numel() == 0:
            return h
        idx = idx.to(h.device)
        values = self.param_at(layer, site, h)[0].index_select(0, idx)  # [n]
        coef = self.coef_at(layer, state, h)[..., None]  # [batch, seq, 1]
        selected = h.index_select(-1, idx).to(values.dtype)  # [batch, seq, n]
        new = self._combine(selected, coef, values).to(h.dtype)
        # out of place: a copy of h with only the steered dims replaced
        return h.index_copy(-1, idx, new)

    def selected(self) -> list[tuple[int, str, int, float]]:
        """``(layer, site, dim, value)`` of every steered dimension, by layer, site, dim."""
        out = []
        for row, layer in enumerate(self.layers):
            for site in self.sites:
                values = self.params[site].detach()[row, 0]  # [width]
                for dim in values.nonzero()[:, 0].tolist():
                    out.append((layer, site, dim, float(values[dim])))
        return out

    def num_steered(self) -> int:
        """Number of steered dimensions (nonzero values) over all layers and sites."""
        return int(sum((p.detach() != 0).sum() for p in self.params.values()))


class AUScale(_AtomicUnitEdit):
    """AUSteer's adaptive atomic-unit steering: ``h_i * (1 + beta * gamma_i)`` where gamma != 0.

    ``gamma`` is one vector per layer x site (``[len(layers), 1, width]``); build it from
    contrastive pairs with :mod:`interventions.methods.austeer.module`.  The update scales the current
    activation (``x_i + gamma_i x_i`` in the paper), so it adapts to each input.
    """

    kind = "auscale"

    def _combine(self, selected: Tensor, coef: Tensor, values: Tensor) -> Tensor:
        return selected * (1 + coef * values)


class AUShift(_AtomicUnitEdit):
    """The fixed-vector ablation of AUSteer: ``h_i + beta * v_i`` where ``v_i != 0``.

    ``v`` is one vector per layer x site (``[len(layers), 1, width]``), e.g. the mean activation
    difference of the contrastive pairs on the selected dims
    (:func:`interventions.methods.austeer.module.fixed_vector`).
    """

    kind = "aushift"

    def _combine(self, selected: Tensor, coef: Tensor, values: Tensor) -> Tensor:
        return selected + coef * values


EDITS: dict[str, type[PointEdit]] = {
    cls.kind: cls for cls in (ActivScalar, SteerVec, DynScalar, AUScale, AUShift)
}
"""Edit types by name; register new ones here to use them from the trainer and configs."""


def build_edit(kind: str, dims: ModelDims, **config: Any) -> PointEdit:
    """Construct an edit by name (``activscalar``, ``steervec``, ``dynscalar``, ...)."""
    if kind not in EDITS:
        raise ValueError(f"Unknown edit type {kind!r}. Available: {', '.join(sorted(EDITS))}.")
    return EDITS[kind](dims, **config)
