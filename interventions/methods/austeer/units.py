"""AUSteer (fine-grained atomic-unit steering): activation momentum, AU selection, steering values.

An *atomic unit* (AU) is one dimension of a block activation (``mlp_out``: what the MLP adds to
the residual stream, the output of its down projection, AUSteer-FFN as its authors run it;
``attn_z``: the per-head attention outputs before the output projection, AUSteer-Head;
``mlp_act``, the input of the down projection, is a variant; every site of the sites table
works).  From ``N`` contrastive pairs (a positive and its matched negative):

1. :func:`au_activations` reads every AU at one token of each row, ``[batch, L, width]``: the
   last real token, or the token ``read_offset`` real tokens before it (the data module's
   answer token, see ``datamodules.commonsense.PairCollator``).
2. :class:`MomentumStats` accumulates, per AU, how often the *activation momentum*
   ``m = x_pos - x_neg`` is positive or negative (Eq. 2: ``r_pos``, ``r_neg``) and the
   *discriminative score* ``s = max(r_pos, r_neg)``, in memory independent of ``N``.  A momentum
   within ``zero_tol`` of the pair's activation scale counts as zero (see
   :class:`MomentumStats`), so float noise never decides a count.
3. :func:`top_k_units` ranks the AUs of every layer (and site) globally by ``s`` and keeps ``k``.
   The localisation ablations are :func:`random_units` and :func:`activation_difference_units`
   (top-k of ``|mean(m)|``, as SADI localises).
4. :func:`austeer_gammas` gives each selected AU ``gamma = alpha * r_pos`` if ``r_pos > r_neg``
   else ``-alpha * r_neg`` (Eq. 3); the steering ablations are :func:`fixed_strength_gammas`
   (one magnitude for all AUs) and :func:`fixed_vector` (add the mean difference, as ITI does).
5. :func:`build_edit` turns the values into an :class:`~interventions.edits.AUScale`
   (``x + beta * gamma * x``) or :class:`~interventions.edits.AUShift` (``x + beta * v``), which
   attach, export and load like every other edit.

Every per-site tensor here is indexed by layer number: ``[L, width]`` with ``L`` the model's
number of layers, so units, gammas and edits never need a separate layer map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from interventions.core.distributed import all_reduce_count, all_reduce_sums
from interventions.core.sites import (
    SITES,
    ModelDims,
    check_site,
)
from interventions.edits import EDITS, PointEdit

Unit = tuple[int, str, int]
"""One atomic unit: ``(layer, site, dim)``."""

STAT_SITES: tuple[str, ...] = SITES
"""Sites whose momentum statistics :class:`AUSteerModule` always collects: every site of the
sites table (AUSteer-Head ``attn_z``, AUSteer-FFN ``mlp_out`` and its ``mlp_act`` variant, CAA's
``resid_post``, ``attn_out``), so one pass over a pool serves every method and site.  Reading
them all costs one forward pass; only one column per row is kept."""

ZERO_TOL = 1e-3
"""Default :class:`MomentumStats` tolerance: a momentum ``|m| <= ZERO_TOL * scale`` counts as
zero, with ``scale`` the pair's mean ``|x|`` over the layer's units (see :class:`MomentumStats`)."""


from interventions.methods.austeer.reading import _check_layers, au_activations  # noqa: E402,F401


# ----------------------------------------------------------------------------- momentum
class MomentumStats:
    """Running activation-momentum statistics over batches of contrastive pairs.

    Memory is ``O(sites x L x width)``, independent of the number of pairs.  Per site, with
    ``m = x_pos - x_neg`` for every pair and AU:

    * ``count_pos`` / ``count_neg``: ``[L, W]`` int64, pairs with ``m > t`` / ``m < -t``,
      where ``t = zero_tol * scale`` (below);
    * ``sum_diff``: ``[L, W]`` float64, ``sum(m)`` (activation-difference localisation and the
      fixed-vector ablation; no tolerance);
    * ``sum_abs_diff``: ``[L, W]`` float64, ``sum(|m|)``, kept only with ``track_abs=True``;
    * ``n``: the number of pairs.

    **The tolerance.**  ``|m| <= zero_tol * scale`` counts as zero (neither promotion nor
    suppression), with ``scale`` the mean ``|x|`` over the layer's units of the site and the
    pair's two texts, ``(mean_i |x_pos,i| + mean_i |x_neg,i|) / 2``.  The rounding error of an
    activation grows with the magnitudes its computation sums, not with the activation itself,
    so the scale is the layer's, shared by its units: a unit near zero in both texts is held to
    the same absolute threshold as a large one.  The default ``1e-3`` is above float32 noise
    (left-padded batches vs one text at a time differ by at most 1e-4 to 3e-4 of that scale on
    SmolLM2, 99.99% of activations by under 6e-5) and below the momenta that carry information.
    It takes out the sign flips of momenta that are pure noise (pairs identical up to rounding at
    a unit, as many ``attn_z`` units are: on COPA's 200 pairs 92 ``attn_z`` units change a count
    between batched and one-at-a-time passes with exact signs, 9 with the tolerance); what can
    remain is a momentum within noise of the threshold itself, one count of ``N``, and in those
    runs the top-k units were the same for every k of the default grid.  ``zero_tol=0`` is the
    exact comparison ``x_pos > x_neg``.

    The statistics live on the CPU whatever device the activations come from.

    Args:
        track_abs: also accumulate ``sum(|m|)`` (for :attr:`mean_abs_diff`).
        zero_tol: the tolerance relative to the activation scale (see above); ``>= 0``.
    """

    def __init__(self, track_abs: bool = False, zero_tol: float = ZERO_TOL) -> None:
        if not zero_tol >= 0:  # also rejects NaN
            raise ValueError(f"zero_tol must be >= 0 (0: exact signs), got {zero_tol!r}.")
        self.track_abs = track_abs
        self.zero_tol = float(zero_tol)
        self.n = 0
        self.count_pos: dict[str, Tensor] = {}
        self.count_neg: dict[str, Tensor] = {}
        self.sum_diff: dict[str, Tensor] = {}
        self.sum_abs_diff: dict[str, Tensor] = {}

    @property
    def sites(self) -> list[str]:
        """Sites seen so far, in the order of the first update."""
        return list(self.count_pos)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """``site -> (L, width)`` of the statistics (the input of :func:`random_units`)."""
        return {site: (t.shape[0], t.shape[1]) for site, t in self.count_pos.items()}

    def update(self, pos: Mapping[str, Tensor], neg: Mapping[str, Tensor]) -> None:
        """Add a batch of pairs: ``pos[site]`` and ``neg[site]`` are ``[batch, L, width]``.

        Row ``j`` of ``pos`` is the positive of pair ``j`` and row ``j`` of ``neg`` its matched
        negative (e.g. both from :func:`au_activations`).
        """
        if set(pos) != set(neg):
            raise ValueError(
                f"Positive activations have sites {sorted(pos)} but negative ones {sorted(neg)}; "
                "each pair needs both sides at the same sites."
            )
        if not pos:
            raise ValueError("update() got no sites; pass site -> [batch, L, width] tensors.")
        if self.count_pos and set(pos) != set(self.count_pos):
            raise ValueError(
                f"This batch has sites {sorted(pos)} but earlier batches had {self.sites}; "
                "every batch must carry the same sites."
            )
        batch = None
        for site in pos:
            p, q = pos[site], neg[site]
            if p.shape != q.shape or p.dim() != 3:
                raise ValueError(
                    f"Site {site!r}: positive activations {list(p.shape)} and negative ones "
                    f"{list(q.shape)} must be equal [batch, L, width] shapes (one matched "
                    "negative per positive)."
                )
            if batch is not None and p.shape[0] != batch:
                raise ValueError(
                    f"Site {site!r} has {p.shape[0]} pairs but another site of the same batch "
                    f"has {batch}; every site must hold the same pairs."
                )
            batch = p.shape[0]
            known = self.shapes.get(site)
            if known is not None and tuple(p.shape[1:]) != known:
                raise ValueError(
                    f"Site {site!r}: this batch is [L, width] = {list(p.shape[1:])} but earlier "
                    f"batches were {list(known)}; all pairs must come from the same model."
                )
            if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
                raise ValueError(
                    f"Site {site!r}: the activations contain NaN or inf (an overflowing dtype?); "
                    "read them in float32."
                )
        for site in pos:
            p, q = pos[site].detach().double(), neg[site].detach().double()
            diff = p - q  # [batch, L, width] momentum m (exact for float32 inputs)
            scale = (p.abs().mean(-1, keepdim=True) + q.abs().mean(-1, keepdim=True)) / 2
            threshold = self.zero_tol * scale  # [batch, L, 1]: 0 gives the exact signs
            self._add(self.count_pos, site, (diff > threshold).sum(0).cpu())
            self._add(self.count_neg, site, (diff < -threshold).sum(0).cpu())
            self._add(self.sum_diff, site, diff.sum(0).cpu())
            if self.track_abs:
                self._add(self.sum_abs_diff, site, diff.abs().sum(0).cpu())
        self.n += int(batch or 0)

    def all_reduce(self) -> None:
        """Sum the statistics of every process into each one's (a no-op in one process); a rank
        whose share of the pool was empty starts from zeros."""
        self.count_pos = all_reduce_sums(self.count_pos)
        self.count_neg = all_reduce_sums(self.count_neg)
        self.sum_diff = all_reduce_sums(self.sum_diff)
        if self.track_abs:
            self.sum_abs_diff = all_reduce_sums(self.sum_abs_diff)
        self.n = all_reduce_count(self.n)

    @staticmethod
    def _add(store: dict[str, Tensor], site: str, value: Tensor) -> None:
        store[site] = value if site not in store else store[site] + value

    def check_not_empty(self) -> None:
        """Raise a clear error if no pair has been added yet."""
        if self.n == 0:
            raise ValueError(
                "MomentumStats: the contrastive pool is empty (no pairs were added with "
                "update()); add at least one positive/negative pair first."
            )

    @property
    def r_pos(self) -> dict[str, Tensor]:
        """``site -> [L, W]`` fraction of pairs with ``m > 0`` (Eq. 2), float32."""
        self.check_not_empty()
        return {site: (c.double() / self.n).float() for site, c in self.count_pos.items()}

    @property
    def r_neg(self) -> dict[str, Tensor]:
        """``site -> [L, W]`` fraction of pairs with ``m < 0`` (Eq. 2), float32."""
        self.check_not_empty()
        return {site: (c.double() / self.n).float() for site, c in self.count_neg.items()}

    @property
    def scores(self) -> dict[str, Tensor]:
        """``site -> [L, W]`` discriminative scores ``s = max(r_pos, r_neg)``, float32."""
        self.check_not_empty()
        return {
            site: (
                torch.maximum(self.count_pos[site], self.count_neg[site]).double() / self.n
            ).float()
            for site in self.sites
        }

    @property
    def mean_diff(self) -> dict[str, Tensor]:
        """``site -> [L, W]`` mean activation difference ``mean(x_pos - x_neg)``, float32."""
        self.check_not_empty()
        return {site: (s / self.n).float() for site, s in self.sum_diff.items()}

    @property
    def mean_abs_diff(self) -> dict[str, Tensor]:
        """``site -> [L, W]`` mean ``|x_pos - x_neg|``, float32 (needs ``track_abs=True``)."""
        if not self.track_abs:
            raise ValueError("mean_abs_diff needs MomentumStats(track_abs=True).")
        self.check_not_empty()
        return {site: (s / self.n).float() for site, s in self.sum_abs_diff.items()}

    def select(self, sites: Sequence[str]) -> MomentumStats:
        """The statistics of some sites only (sharing the tensors), e.g. to rank one site's AUs."""
        missing = [site for site in sites if site not in self.count_pos]
        if missing:
            raise ValueError(f"No statistics for sites {missing}; these have some: {self.sites}.")
        out = MomentumStats(track_abs=self.track_abs, zero_tol=self.zero_tol)
        out.n = self.n
        for name in ("count_pos", "count_neg", "sum_diff", "sum_abs_diff"):
            store = getattr(self, name)
            setattr(out, name, {site: store[site] for site in sites if site in store})
        return out

    def state_dict(self) -> dict[str, Any]:
        """The statistics as plain tensors and ints (e.g. for a Lightning checkpoint)."""
        return dict(
            n=self.n,
            track_abs=self.track_abs,
            zero_tol=self.zero_tol,
            count_pos=dict(self.count_pos),
            count_neg=dict(self.count_neg),
            sum_diff=dict(self.sum_diff),
            sum_abs_diff=dict(self.sum_abs_diff),
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a state saved before the tolerance existed
        was counted with exact signs: ``zero_tol=0``)."""
        self.n = int(state["n"])
        self.track_abs = bool(state["track_abs"])
        self.zero_tol = float(state.get("zero_tol", 0.0))
        self.count_pos = dict(state["count_pos"])
        self.count_neg = dict(state["count_neg"])
        self.sum_diff = dict(state["sum_diff"])
        self.sum_abs_diff = dict(state["sum_abs_diff"])


# ----------------------------------------------------------------------------- selection
class _UnitTable:
    """The candidate units of ``site -> [L, W]`` tensors, flattened layer, then site, then dim."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], layers: Sequence[int] | None):
        if not shapes:
            raise ValueError("No sites to select units from.")
        num_layers = {shape[0] for shape in shapes.values()}
        if len(num_layers) != 1:
            raise ValueError(f"All sites must have the same number of layers, got {dict(shapes)}.")
        self.sites = list(shapes)
        self.widths = [shapes[site][1] for site in self.sites]
        self.layers = _check_layers(layers, num_layers.pop())
        self.row_width = sum(self.widths)
        self.size = len(self.layers) * self.row_width

    def flatten(self, values: Mapping[str, Tensor]) -> Tensor:
        """``[len(layers) * sum(widths)]`` the values in candidate order."""
        rows = [values[site].detach().double().cpu()[self.layers] for site in self.sites]
        return torch.cat(rows, dim=1).reshape(-1)  # [len(layers), sum(widths)] -> flat

    def unit(self, index: int) -> Unit:
        """The ``(layer, site, dim)`` at a flat index."""
        row, col = divmod(index, self.row_width)
        for site, width in zip(self.sites, self.widths, strict=True):
            if col < width:
                return (self.layers[row], site, col)
            col -= width
        raise IndexError(index)

    def check_k(self, k: int) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive number of units, got {k!r}.")
        if k > self.size:
            raise ValueError(
                f"k={k} but there are only {self.size} units ({len(self.layers)} layers x "
                f"{' + '.join(f'{w} ({s})' for s, w in zip(self.sites, self.widths, strict=True))}"
                " dims); choose k <= "
                f"{self.size}."
            )


def top_k_units(
    scores: Mapping[str, Tensor], k: int, layers: Sequence[int] | None = None
) -> list[Unit]:
    """The ``k`` units with the highest score over all layers and sites, best first.

    Ties are broken deterministically: lower layer first, then the order of the sites in
    ``scores``, then lower dim.

    Args:
        scores: ``site -> [L, W]`` (row = layer number), e.g. :attr:`MomentumStats.scores`.
        k: number of units to keep (the paper uses at most 100).
        layers: candidate layers; ``None`` = every layer.

    Returns:
        ``(layer, site, dim)`` of the selected units, by decreasing score.
    """
    table = _UnitTable({site: (s.shape[0], s.shape[1]) for site, s in scores.items()}, layers)
    table.check_k(k)
    flat = table.flatten(scores)  # [units]
    if torch.isnan(flat).any():
        raise ValueError("The scores contain NaN; they cannot be ranked.")
    order = torch.sort(flat, descending=True, stable=True).indices[:k]  # stable: ties in order
    return [table.unit(i) for i in order.tolist()]


def random_units(
    shapes: Mapping[str, tuple[int, int]],
    k: int,
    seed: int = 0,
    layers: Sequence[int] | None = None,
) -> list[Unit]:
    """``k`` distinct units drawn uniformly at random (the random-localisation ablation).

    Args:
        shapes: ``site -> (L, width)``, e.g. :attr:`MomentumStats.shapes` or
            ``{site: (dims.num_layers, dims.width(site))}``.
        k: number of units.
        seed: seed of the draw (same seed, same units).
        layers: candidate layers; ``None`` = every layer.

    Returns:
        ``(layer, site, dim)`` sorted by layer, site order, dim.
    """
    table = _UnitTable(shapes, layers)
    table.check_k(k)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(table.size, generator=generator)[:k].sort().values
    return [table.unit(i) for i in picked.tolist()]


def activation_difference_units(
    stats: MomentumStats, k: int, layers: Sequence[int] | None = None
) -> list[Unit]:
    """Top-k units by ``|mean(x_pos - x_neg)|`` (the SADI-style localisation ablation)."""
    return top_k_units({site: d.abs() for site, d in stats.mean_diff.items()}, k, layers)


# ----------------------------------------------------------------------------- steering values
def _unit_mask(stats: MomentumStats, units: Sequence[Unit]) -> dict[str, Tensor]:
    """``site -> [L, W]`` bool, true at the given units (checked against the statistics)."""
    stats.check_not_empty()
    if not units:
        raise ValueError("No units given; select some with top_k_units first.")
    shapes = stats.shapes
    mask = {site: torch.zeros(shape, dtype=torch.bool) for site, shape in shapes.items()}
    for layer, site, dim in units:
        if site not in mask:
            raise ValueError(f"Unit {(layer, site, dim)} is at a site the statistics lack.")
        num_layers, width = shapes[site]
        if not (0 <= layer < num_layers and 0 <= dim < width):
            raise ValueError(
                f"Unit {(layer, site, dim)} is outside the statistics' [L, width] = "
                f"{[num_layers, width]} at {site!r}."
            )
        mask[site][layer, dim] = True
    return mask


def austeer_gammas(stats: MomentumStats, units: Sequence[Unit], alpha: float) -> dict[str, Tensor]:
    """AUSteer's adaptive strengths (Eq. 3) on the selected units, zero elsewhere.

    ``gamma = alpha * r_pos`` if ``r_pos > r_neg``, else ``-alpha * r_neg`` (so an AU whose
    momentum was never nonzero gets ``gamma = 0`` and is not steered).

    Returns:
        ``site -> [L, W]`` float32, the values of an :class:`~interventions.edits.AUScale`.
    """
    mask = _unit_mask(stats, units)
    r_pos, r_neg = stats.r_pos, stats.r_neg
    out = {}
    for site in stats.sites:
        promotes = stats.count_pos[site] > stats.count_neg[site]  # [L, W]
        gamma = torch.where(promotes, alpha * r_pos[site], -alpha * r_neg[site])
        out[site] = torch.where(mask[site], gamma, 0.0)
    return out


def fixed_strength_gammas(
    stats: MomentumStats, units: Sequence[Unit], alpha: float
) -> dict[str, Tensor]:
    """The fixed-strength ablation: one ``|gamma|`` for every selected unit.

    The magnitude is ``alpha`` times the mean discriminative score ``s`` of the selected units,
    so it matches the average strength :func:`austeer_gammas` would give them; each unit keeps
    AUSteer's sign (``+`` if ``r_pos > r_neg``, else ``-``; a unit with ``r_pos == r_neg`` is
    therefore steered with ``-``, as Eq. 3's "otherwise" branch does).

    Returns:
        ``site -> [L, W]`` float32, the values of an :class:`~interventions.edits.AUScale`.
    """
    mask = _unit_mask(stats, units)
    scores = stats.scores
    chosen = torch.cat([scores[site][mask[site]] for site in stats.sites])  # [units]
    magnitude = alpha * float(chosen.double().mean())
    out = {}
    for site in stats.sites:
        promotes = stats.count_pos[site] > stats.count_neg[site]  # [L, W]
        sign = torch.where(promotes, 1.0, -1.0)
        out[site] = torch.where(mask[site], magnitude * sign, 0.0).float()
    return out


def fixed_vector(
    stats: MomentumStats, units: Sequence[Unit], alpha: float = 1.0
) -> dict[str, Tensor]:
    """The fixed-vector ablation: ``alpha`` times the mean activation difference, selected dims.

    Replaces AUSteer's input-dependent ``gamma * x`` by a constant shift (as ITI steers):
    ``x + beta * alpha * mean(x_pos - x_neg)`` on each selected unit, with ``beta`` the runtime
    strength of :func:`~interventions.core.hooks.attach`.  A unit whose mean difference is exactly 0
    is not steered.

    Returns:
        ``site -> [L, W]`` float32, the values of an :class:`~interventions.edits.AUShift`.
    """
    mask = _unit_mask(stats, units)
    mean = stats.mean_diff
    return {site: torch.where(mask[site], alpha * mean[site], 0.0) for site in stats.sites}


def build_edit(
    dims: ModelDims,
    values: Mapping[str, Tensor],
    kind: Literal["auscale", "aushift"] = "auscale",
    positions: Literal["all", "last"] = "all",
) -> PointEdit:
    """An :class:`~interventions.edits.AUScale` / ``AUShift`` on every layer holding ``values``.

    (Not to be confused with :func:`interventions.edits.build_edit`, which builds any edit type
    by name with initial parameters.)

    Args:
        dims: sizes of the model (:func:`interventions.core.sites.model_dims`).
        values: ``site -> [num_layers, width(site)]`` gammas (``auscale``) or shifts
            (``aushift``); zero = not steered.
        kind: ``"auscale"`` (AUSteer, ``x + beta * gamma * x``) or ``"aushift"`` (fixed vector,
            ``x + beta * v``).
        positions: ``"all"`` real tokens (generated ones too) or the ``"last"`` prompt token and
            every generated token.

    Returns:
        The edit, with its parameters frozen (computed, not trained).
    """
    if kind not in ("auscale", "aushift"):
        raise ValueError(f"kind must be 'auscale' or 'aushift', got {kind!r}.")
    if not values:
        raise ValueError("values is empty; pass site -> [num_layers, width] tensors.")
    for site, value in values.items():
        check_site(site)
        expected = (dims.num_layers, dims.width(site))
        if tuple(value.shape) != expected:
            raise ValueError(
                f"values[{site!r}] has shape {list(value.shape)}; this model needs "
                f"{list(expected)} (num_layers x width of {site})."
            )
    edit = EDITS[kind](dims, sites=list(values), positions=positions)
    with torch.no_grad():
        for site, value in values.items():
            edit.params[site].copy_(value[:, None, :])  # [L, W] -> [L, 1, W]
    edit.requires_grad_(False)
    return edit


# ---- Lightning module ----


Method = Literal["austeer", "random", "actdiff", "fixed_vector", "fixed_strength", "caa"]
