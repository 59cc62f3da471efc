"""Per-architecture table of intervention sites.

A *site* names what an activation carries, in the words of the papers, independently of how a
model family calls its modules:

============  =====================================================================  ========
site          what it carries                                                        width
============  =====================================================================  ========
resid_post    a layer's output residual stream                                       d_model
attn_out      what the attention block adds to the residual stream                   d_model
mlp_out       what the MLP block adds to the residual stream (the output of the MLP  d_model
              down projection; AUSteer-FFN's units as its authors steer them)
attn_z        per-head attention outputs before the output projection                heads x head_dim
              (the input of o_proj / c_proj / dense); unit = head (AUSteer-Head's
              units: one dimension of it)
mlp_act       the input of the MLP down projection (the MLP hidden activation; an    d_mlp
              AUSteer-FFN variant steers its dimensions)
============  =====================================================================  ========

Each :class:`ArchRow` maps these names to a module path relative to one decoder layer and the
side of that module the activation is read from (its ``output`` or its ``input``), in the spirit of
pyvene's mapping tables.  For Gemma 2/3 the block outputs pass through post-norms before they are
added to the residual stream, so ``attn_out`` / ``mlp_out`` are the outputs of those norms.

The sites above are where edits write.  A row also says where the residual stream is *read*,
which attribution methods (EAP-IG in :mod:`interventions.methods.eap.eap_ig`) need:

* :class:`Norms` -- the attention and MLP pre-norms of a layer (their input is the residual
  stream a block reads), the final norm before the unembedding (its input is what the logits
  read) and, for Gemma 2/3, the attention post-norm;
* :class:`QKVProjections` -- the query/key/value projection(s) of a layer and how heads are laid
  out in their outputs (``None`` for a family whose heads cannot be split into q/k/v inputs);
* ``parallel_residual`` -- whether attention and MLP of a layer read the same residual stream
  (GPT-NeoX with ``use_parallel_residual``).

These are plain row fields rather than sites: the final norm lives outside the layers, and a fused
q/k/v output (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) holds three activations of different
meaning, so neither fits the one-module-one-activation shape of :class:`SiteSpec`.  From them
:func:`point_module` resolves the **read points** (:data:`READ_POINTS`), which
:func:`interventions.core.hooks.attach` and ``record`` hook like sites:

=============  ==========================================================================
read point     the activation
=============  ==========================================================================
layer_in       the residual stream entering a decoder layer (the layer's input)
resid_pre      the input of the attention pre-norm (what the attention block reads)
resid_mid      the input of the MLP pre-norm (what the MLP block reads)
resid_final    the input of the final norm (what the logits read); layer = ``num_layers``
attn_post_in   the input of the attention post-norm (Gemma 2/3 only)
attn_post_out  the output of the attention post-norm (Gemma 2/3 only)
qkv0..qkv2     the output of the j-th q/k/v projection module of ``QKVProjections.paths``
=============  ==========================================================================

Supporting a new architecture means adding one row to :data:`ARCHITECTURES`; ``docs/your-model.md``
walks through it with the Phi-3 row as the worked example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from torch import nn

from interventions.core.errors import ConfigError, did_you_mean

Site = Literal["resid_post", "attn_out", "mlp_out", "attn_z", "mlp_act"]
"""A site name (the type of a ``site`` argument a config may set)."""

SITES: tuple[str, ...] = get_args(Site)
"""Every site name, in a fixed order."""

READ_POINTS: tuple[str, ...] = (
    "layer_in", "resid_pre", "resid_mid", "resid_final", "attn_post_in", "attn_post_out",
    "qkv0", "qkv1", "qkv2",
)  # fmt: skip
"""Points hooks can read (and replace) besides the edit sites (see the module docstring)."""


@dataclass(frozen=True)
class SiteSpec:
    """Where a site lives inside one decoder layer.

    Attributes:
        path: dotted module path relative to the layer module ("" = the layer itself).
        side: ``"output"`` (the module's output, first element if it returns a tuple) or
            ``"input"`` (the module's first positional input).
    """

    path: str
    side: Literal["output", "input"]


@dataclass(frozen=True)
class ModelDims:
    """The sizes an intervention depends on; two models with equal dims accept the same edits.

    Attributes:
        architecture: ``config.model_type``.
        num_layers: number of decoder layers.
        d_model: width of the residual stream.
        num_heads: number of attention (query) heads.
        head_dim: width of one head.
        d_mlp: width of the MLP hidden layer.
        num_kv_heads: number of key/value heads (fewer than ``num_heads`` with grouped-query
            attention).  No edit depends on it, so it is left out of ``==`` (an edit made for a
            model accepts any model with the same other sizes) and is ``None`` in dims read from
            files exported before it was recorded.
    """

    architecture: str
    num_layers: int
    d_model: int
    num_heads: int
    head_dim: int
    d_mlp: int
    num_kv_heads: int | None = field(default=None, compare=False)

    def width(self, site: str) -> int:
        """Width of the activation vector at ``site``."""
        check_site(site)
        if site == "attn_z":
            return self.num_heads * self.head_dim
        if site == "mlp_act":
            return self.d_mlp
        return self.d_model

    def units(self, site: str) -> int:
        """Number of units a per-unit edit scales at ``site`` (heads for attn_z, else 1)."""
        return self.num_heads if site == "attn_z" else 1


def _llama_dims(cfg) -> dict[str, int]:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return dict(
        num_layers=cfg.num_hidden_layers,
        d_model=cfg.hidden_size,
        num_heads=heads,
        head_dim=head_dim,
        d_mlp=cfg.intermediate_size,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
    )


def _gpt2_dims(cfg) -> dict[str, int]:
    return dict(
        num_layers=cfg.n_layer,
        d_model=cfg.n_embd,
        num_heads=cfg.n_head,
        head_dim=cfg.n_embd // cfg.n_head,
        d_mlp=cfg.n_inner or 4 * cfg.n_embd,
        num_kv_heads=cfg.n_head,
    )


def _neox_dims(cfg) -> dict[str, int]:
    return dict(
        num_layers=cfg.num_hidden_layers,
        d_model=cfg.hidden_size,
        num_heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        d_mlp=cfg.intermediate_size,
        num_kv_heads=cfg.num_attention_heads,
    )


QKVLayout = Literal["separate", "gpt2_fused", "neox_fused"]
"""How heads are laid out in the q/k/v projection outputs: ``"separate"`` (three modules, each
``[heads, head_dim]``), ``"gpt2_fused"`` (one module, ``[q heads | k heads | v heads]``, the k and v
parts ``num_kv_heads`` wide: GPT-2 ``c_attn``, Phi-3 ``qkv_proj``) or ``"neox_fused"`` (one module,
per head ``[q | k | v]``)."""


@dataclass(frozen=True)
class Norms:
    """The norms through which a family's blocks and unembedding read the residual stream.

    Attributes:
        attn: path (in a layer) of the attention pre-norm; its input is the residual stream the
            attention block reads.
        mlp: path (in a layer) of the MLP pre-norm; its input is what the MLP block reads.
        final: path (in the model) of the norm before the unembedding; its input is what the
            logits read.
        attn_post: path (in a layer) of a norm applied to the attention output before it is added
            to the residual stream (Gemma 2/3), or ``None``.
    """

    attn: str
    mlp: str
    final: str
    attn_post: str | None = None


@dataclass(frozen=True)
class QKVProjections:
    """The query/key/value projection(s) of a layer's attention.

    Attributes:
        paths: module paths (in a layer): three modules (q, k, v) for ``"separate"``, one fused
            module otherwise.
        layout: how heads are laid out in the projection outputs (see :data:`QKVLayout`).
    """

    paths: tuple[str, ...]
    layout: QKVLayout

    def head_rows(
        self,
        kind: Literal["q", "k", "v"],
        head: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
    ) -> tuple[int, range]:
        """Where one head's query (``head`` < ``num_heads``) or key/value (``head`` <
        ``num_kv_heads``) lives: the index of its module in ``paths`` and its ``head_dim`` output
        features of that module."""
        k = "qkv".index(kind)
        if self.layout == "separate":
            module, start = k, head * head_dim
        elif self.layout == "gpt2_fused":  # [q heads | k heads | v heads]
            width = (num_heads if k == 0 else num_kv_heads) * head_dim
            module, start = 0, (0 if k == 0 else num_heads * head_dim + (k - 1) * width)
            start += head * head_dim
        else:  # neox_fused: per head [q | k | v]
            module, start = 0, head * 3 * head_dim + k * head_dim
        return module, range(start, start + head_dim)


def _no_parallel_residual(cfg: object) -> bool:
    return False


def _neox_parallel_residual(cfg: object) -> bool:
    return bool(getattr(cfg, "use_parallel_residual", False))


@dataclass(frozen=True)
class ArchRow:
    """One model family: where its layers are, where each site is, how to read its sizes, and
    where its blocks read the residual stream.

    Attributes:
        family: short name of the family.
        model_types: every ``config.model_type`` the row serves.
        layers_path: path (in the model) of the list of decoder layers.
        sites: site name -> where it lives in a layer (see the module docstring).
        dims: reads the keyword arguments of :class:`ModelDims` (all but ``architecture``) from a
            config.
        norms: the pre-norms, final norm and (Gemma) attention post-norm.
        qkv: the q/k/v projections, or ``None`` if the family's attention inputs cannot be split
            per head.
        parallel_residual: reads from a config whether attention and MLP of a layer read the
            same residual stream.
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str
    sites: dict[str, SiteSpec]
    dims: Callable[[object], dict[str, int]]
    norms: Norms
    qkv: QKVProjections | None
    parallel_residual: Callable[[object], bool] = _no_parallel_residual


_LLAMA_SITES = {
    "resid_post": SiteSpec("", "output"),
    "attn_out": SiteSpec("self_attn", "output"),
    "mlp_out": SiteSpec("mlp", "output"),
    "attn_z": SiteSpec("self_attn.o_proj", "input"),
    "mlp_act": SiteSpec("mlp.down_proj", "input"),
}

_GEMMA_SITES = {
    "resid_post": SiteSpec("", "output"),
    # Gemma 2/3 normalise each block's output before adding it to the residual stream.
    "attn_out": SiteSpec("post_attention_layernorm", "output"),
    "mlp_out": SiteSpec("post_feedforward_layernorm", "output"),
    "attn_z": SiteSpec("self_attn.o_proj", "input"),
    "mlp_act": SiteSpec("mlp.down_proj", "input"),
}

_SEPARATE_QKV = QKVProjections(
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "separate"
)

ARCHITECTURES: tuple[ArchRow, ...] = (
    ArchRow(
        family="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        sites={
            "resid_post": SiteSpec("", "output"),
            "attn_out": SiteSpec("attn", "output"),
            "mlp_out": SiteSpec("mlp", "output"),
            "attn_z": SiteSpec("attn.c_proj", "input"),
            "mlp_act": SiteSpec("mlp.c_proj", "input"),
        },
        dims=_gpt2_dims,
        norms=Norms(attn="ln_1", mlp="ln_2", final="transformer.ln_f"),
        qkv=QKVProjections(("attn.c_attn",), "gpt2_fused"),
    ),
    ArchRow(
        family="gpt_neox",
        model_types=("gpt_neox",),
        layers_path="gpt_neox.layers",
        sites={
            "resid_post": SiteSpec("", "output"),
            "attn_out": SiteSpec("attention", "output"),
            "mlp_out": SiteSpec("mlp", "output"),
            "attn_z": SiteSpec("attention.dense", "input"),
            "mlp_act": SiteSpec("mlp.dense_4h_to_h", "input"),
        },
        dims=_neox_dims,
        norms=Norms(
            attn="input_layernorm",
            mlp="post_attention_layernorm",
            final="gpt_neox.final_layer_norm",
        ),
        qkv=QKVProjections(("attention.query_key_value",), "neox_fused"),
        parallel_residual=_neox_parallel_residual,
    ),
    ArchRow(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers_path="model.layers",
        sites=_LLAMA_SITES,
        dims=_llama_dims,
        norms=Norms(attn="input_layernorm", mlp="post_attention_layernorm", final="model.norm"),
        qkv=_SEPARATE_QKV,
    ),
    # Phi-3 fuses q/k/v into one ``qkv_proj`` laid out [q heads | k heads | v heads] (the GPT-2
    # layout, with grouped-query k/v widths) and gate/up into one ``gate_up_proj``.  Neither is a
    # site: attn_z is the input of o_proj and mlp_act the input of down_proj, as for Llama.
    ArchRow(
        family="phi3",
        model_types=("phi3",),
        layers_path="model.layers",
        sites=_LLAMA_SITES,
        dims=_llama_dims,
        norms=Norms(attn="input_layernorm", mlp="post_attention_layernorm", final="model.norm"),
        qkv=QKVProjections(("self_attn.qkv_proj",), "gpt2_fused"),
    ),
    ArchRow(
        family="gemma",
        model_types=("gemma2", "gemma3_text"),
        layers_path="model.layers",
        sites=_GEMMA_SITES,
        dims=_llama_dims,
        norms=Norms(
            attn="input_layernorm",
            mlp="pre_feedforward_layernorm",
            final="model.norm",
            attn_post="post_attention_layernorm",
        ),
        qkv=_SEPARATE_QKV,
    ),
)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` the table knows."""
    return sorted(t for row in ARCHITECTURES for t in row.model_types)


def check_site(site: str) -> None:
    """Raise a clear :class:`~interventions.core.errors.ConfigError` for an unknown site name
    (suggesting the closest valid one)."""
    if site not in SITES:
        hint = did_you_mean(site, SITES)
        raise ConfigError(f"Unknown site {site!r}. Supported sites: {', '.join(SITES)}.{hint}")


def check_sites(sites: str | Sequence[str]) -> list[str]:
    """The distinct site names of ``sites`` (one name or a list of names), in order; a clear
    :class:`~interventions.core.errors.ConfigError` for an empty list or an unknown name.

    Cheap and model-free, so modules call it before they load a backbone."""
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise ConfigError(
            f"sites is empty: name at least one site out of {', '.join(SITES)}, e.g. "
            "sites: [attn_out, mlp_out] (command line: --model.sites '[attn_out, mlp_out]')."
        )
    for site in names:
        if not isinstance(site, str) or site not in SITES:
            raise ConfigError(
                f"Unknown site {site!r} in sites {names}: each site must be one of "
                f"{', '.join(SITES)}.{did_you_mean(site, SITES)}"
            )
    return list(dict.fromkeys(names))


def check_model_type(model_type: str | None, backbone: str | None = None) -> ArchRow:
    """The table row serving ``config.model_type``; a one-line
    :class:`~interventions.core.errors.ConfigError` naming the model type, the supported families
    and where to add a row when no row serves it."""
    for row in ARCHITECTURES:
        if model_type in row.model_types:
            return row
    what = f"Architecture {model_type!r} (config.model_type)"
    if backbone:
        what = f"Backbone {backbone!r} has architecture {model_type!r} (config.model_type), which"
    families = ", ".join(f"{row.family} ({', '.join(row.model_types)})" for row in ARCHITECTURES)
    raise ConfigError(
        f"{what} is not in the sites table. "
        f"Supported model types by family: {families}. To support it, add a row to "
        "ARCHITECTURES in interventions/core/sites.py: an ArchRow with family, "
        f"model_types=({model_type or 'model_type'!r},), layers_path (the list of decoder "
        "layers, e.g. 'model.layers'), sites (a SiteSpec(path, 'output' | 'input') in a layer "
        f"for each of {', '.join(SITES)}: attn_z is the input of the attention output projection, mlp_act "
        "the input of the MLP down projection), dims (reads num_layers, d_model, num_heads, "
        "head_dim, d_mlp, num_kv_heads from the config), norms (Norms(attn, mlp, final)) and qkv "
        "(QKVProjections(paths, layout), or None). Step by step, with Phi-3 as the worked "
        "example: docs/your-model.md."
    )


def arch_row(model: nn.Module) -> ArchRow:
    """The table row for ``model`` (a Hugging Face causal LM), or a clear error."""
    return check_model_type(getattr(getattr(model, "config", None), "model_type", None))


def model_dims(model: nn.Module) -> ModelDims:
    """Sizes of ``model`` as the sites table reads them from its config."""
    row = arch_row(model)
    return ModelDims(architecture=model.config.model_type, **row.dims(model.config))


def layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers."""
    return model.get_submodule(arch_row(model).layers_path)


def check_layer(layer: int, num_layers: int) -> None:
    """Raise a clear error for a layer index outside ``[0, num_layers)``."""
    if not isinstance(layer, int) or not 0 <= layer < num_layers:
        raise ValueError(
            f"Layer {layer!r} is out of range: this model has {num_layers} layers, "
            f"so layers must be integers in 0..{num_layers - 1}."
        )


def site_module(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, str]:
    """The module that carries ``site`` at ``layer`` and the side to hook (output or input)."""
    check_site(site)
    row = arch_row(model)
    stack = model.get_submodule(row.layers_path)
    check_layer(layer, len(stack))
    spec = row.sites[site]
    module = stack[layer].get_submodule(spec.path) if spec.path else stack[layer]
    return module, spec.side


def point_module(model: nn.Module, layer: int, point: str) -> tuple[nn.Module, str]:
    """The module and side of a site (:data:`SITES`) or read point (:data:`READ_POINTS`)."""
    if point in SITES:
        return site_module(model, layer, point)
    if point not in READ_POINTS:
        raise ConfigError(
            f"Unknown point {point!r}. Sites: {', '.join(SITES)}; read points: "
            f"{', '.join(READ_POINTS)}.{did_you_mean(point, (*SITES, *READ_POINTS))}"
        )
    row = arch_row(model)
    stack = model.get_submodule(row.layers_path)
    if point == "resid_final":
        if layer != len(stack):
            raise ValueError(
                f"resid_final is read after the last layer: pass layer={len(stack)} "
                f"(num_layers), got {layer}."
            )
        return model.get_submodule(row.norms.final), "input"
    check_layer(layer, len(stack))
    block = stack[layer]
    if point == "layer_in":
        return block, "input"
    if point == "resid_pre":
        return block.get_submodule(row.norms.attn), "input"
    if point == "resid_mid":
        return block.get_submodule(row.norms.mlp), "input"
    if point in ("attn_post_in", "attn_post_out"):
        if row.norms.attn_post is None:
            raise ValueError(f"The {row.family} family has no attention post-norm ({point}).")
        side = "input" if point == "attn_post_in" else "output"
        return block.get_submodule(row.norms.attn_post), side
    j = int(point.removeprefix("qkv"))
    paths = row.qkv.paths if row.qkv is not None else ()
    if j >= len(paths):
        raise ValueError(
            f"The {row.family} family has {len(paths)} q/k/v projection module(s); {point} "
            "does not exist."
        )
    return block.get_submodule(paths[j]), "output"
