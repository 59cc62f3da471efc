"""Phi-3, the worked example of adding an architecture (docs/your-model.md).

Phi-3 fuses q/k/v into one ``qkv_proj`` and gate/up into one ``gate_up_proj``; its sites table row
reuses the Llama sites (attn_z = the input of ``o_proj``, mlp_act = the input of ``down_proj``).
The generic tests over ``conftest.ARCHS`` (test_hooks, test_eap, test_dispatch, test_sweep,
test_commonsense) cover it too; this file checks the row against the modeling file by hand: the
hooked attn_z and mlp_act equal the attention and MLP recomputed from the fused projections, an
ActivScalar edit at each site equals a hand-written hook, and a tiny Phi-3 trains one step.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import random_batch, tiny_model
from transformers import AutoModelForCausalLM, Phi3Config
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

from datamodules import IOIDataModule
from interventions.core.hooks import attach, position_ids, record
from interventions.core.sites import SITES, arch_row, model_dims
from interventions.edits import ActivScalar
from interventions.edits.artifact import load_intervention
from interventions.methods.scaling.module import InterventionModule
from interventions.reporting.run_folder import resolve_run

# Where each site lives in a Phi3DecoderLayer, restated from modeling_phi3 (not read from the
# sites table): (module path in the layer, side).
PHI3_SITES = {
    "resid_post": ("", "output"),
    "attn_out": ("self_attn", "output"),
    "mlp_out": ("mlp", "output"),
    "attn_z": ("self_attn.o_proj", "input"),
    "mlp_act": ("mlp.down_proj", "input"),
}


@pytest.fixture
def phi3():
    return tiny_model("phi3")


def test_phi3_row_and_dims(phi3):
    row, dims = arch_row(phi3), model_dims(phi3)
    assert row.family == "phi3" and row.layers_path == "model.layers"
    assert {s: (spec.path, spec.side) for s, spec in row.sites.items()} == PHI3_SITES
    assert row.qkv is not None and row.qkv.paths == ("self_attn.qkv_proj",)
    cfg = phi3.config
    assert (dims.num_layers, dims.d_model, dims.num_heads, dims.head_dim, dims.d_mlp) == (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.hidden_size // cfg.num_attention_heads,
        cfg.intermediate_size,
    )
    assert dims.num_kv_heads == cfg.num_key_value_heads == 2  # grouped-query attention
    attn = phi3.model.layers[0].self_attn
    assert attn.qkv_proj.out_features == (dims.num_heads + 2 * dims.num_kv_heads) * dims.head_dim
    assert phi3.model.layers[0].mlp.gate_up_proj.out_features == 2 * dims.d_mlp


def test_attn_z_and_mlp_act_equal_the_fused_projections_recomputed_by_hand(phi3):
    """attn_z = per-head softmax(q k^T / sqrt(d)) v from the split of qkv_proj's output
    ([q heads | k heads | v heads], k/v heads shared by num_heads / num_kv_heads query heads);
    mlp_act = up * silu(gate) from the halves of gate_up_proj's output; o_proj(attn_z) and
    down_proj(mlp_act) are attn_out and mlp_out."""
    dims = model_dims(phi3)
    h, kv, dh = dims.num_heads, dims.num_kv_heads, dims.head_dim
    ids, mask, _ = random_batch(2, [7, 7], "right", seed=4)
    layer = 1
    block = phi3.model.layers[layer]
    seen = {}
    hooks = [
        block.input_layernorm.register_forward_hook(lambda m, a, o: seen.__setitem__("x", o)),
        block.post_attention_layernorm.register_forward_hook(
            lambda m, a, o: seen.__setitem__("y", o)
        ),
    ]
    points = [(layer, s) for s in ("attn_z", "mlp_act", "attn_out", "mlp_out")]
    try:
        with torch.no_grad(), record(phi3, points) as acts:
            phi3(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        qkv = block.self_attn.qkv_proj(seen["x"])  # [B, T, (h + 2 kv) dh]
        q, k, v = qkv.split([h * dh, kv * dh, kv * dh], dim=-1)
        batch, seq = ids.shape
        q, k, v = (t.view(batch, seq, -1, dh).transpose(1, 2) for t in (q, k, v))
        cos, sin = phi3.model.rotary_emb(v, position_ids(mask))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = (t.repeat_interleave(h // kv, dim=1) for t in (k, v))
        scores = q @ k.transpose(-1, -2) / dh**0.5
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        z = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # [B, h, T, dh]
        z = z.transpose(1, 2).reshape(batch, seq, h * dh)
        gate, up = block.mlp.gate_up_proj(seen["y"]).chunk(2, dim=-1)
        act = up * torch.nn.functional.silu(gate)
    torch.testing.assert_close(acts[(layer, "attn_z")], z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[(layer, "mlp_act")], act, atol=1e-5, rtol=1e-5)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block.self_attn.o_proj(z), acts[(layer, "attn_out")], **tol)
    torch.testing.assert_close(block.mlp.down_proj(act), acts[(layer, "mlp_out")], **tol)


@pytest.mark.parametrize("site", SITES)
def test_activscalar_at_each_site_equals_a_hand_written_hook(phi3, site):
    """ActivScalar at one Phi-3 site scales exactly the activation a plain PyTorch hook on the
    restated module sees (per position; per head on attn_z), with a per-row beta."""
    dims = model_dims(phi3)
    ids, mask, _ = random_batch(2, [6, 6], "left", seed=2)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    layer = 1
    edit = ActivScalar(dims, sites=[site], layers=[layer], positions="all", num_positions=6)
    with torch.no_grad():
        edit.params[site].copy_(torch.randn(edit.params[site].shape) * 0.5)
    beta = torch.tensor([1.0, -0.5])
    with torch.no_grad():
        clean = phi3(**kwargs).logits
        with attach(phi3, edit, beta=beta):
            edited = phi3(**kwargs).logits

    alpha = edit.params[site][0].detach()  # [positions, units]
    units = dims.units(site)
    scale = 1 + beta[:, None, None] * alpha[None]  # [B, T, units] (no padding: T = positions)
    scale = scale.repeat_interleave(dims.width(site) // units, dim=-1)  # [B, T, width]
    path, side = PHI3_SITES[site]
    block = phi3.model.layers[layer]
    module = block.get_submodule(path) if path else block
    if side == "input":
        handle = module.register_forward_pre_hook(lambda m, a: (a[0] * scale, *a[1:]))
    else:

        def scale_output(m, a, out):
            if isinstance(out, tuple):
                return (out[0] * scale, *out[1:])
            return out * scale

        handle = module.register_forward_hook(scale_output)
    try:
        with torch.no_grad():
            expected = phi3(**kwargs).logits
    finally:
        handle.remove()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited, clean, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_phi3_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Phi-3 with SmolLM2's vocabulary, saved with its tokenizer (a local backbone
    folder, like conftest's ``tiny_backbone_dir``)."""
    folder = tmp_path_factory.mktemp("tiny_phi3")
    torch.manual_seed(0)
    cfg = Phi3Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(smol_tokenizer),
        max_position_embeddings=256,
        pad_token_id=smol_tokenizer.pad_token_id,
        bos_token_id=smol_tokenizer.bos_token_id,
        eos_token_id=smol_tokenizer.eos_token_id,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return str(folder)


def test_tiny_phi3_trains_through_intervention_module(tiny_phi3_dir, tmp_path):
    """InterventionModule on a Phi-3 backbone with an edit at every site: one Lightning training
    step moves every site's parameters, and the exported intervention loads back."""
    dm = IOIDataModule(backbone=tiny_phi3_dir, num_train=8, num_val=4, num_test=4, batch_size=8)
    module = InterventionModule(
        backbone=tiny_phi3_dir,
        sites=list(SITES),
        num_positions=dm.prompt_length,
        init_std=0.01,
        lr=0.05,
        num_samples=0,
    )
    assert module.dims.architecture == "phi3"
    before = {s: p.detach().clone() for s, p in module.edit.params.items()}
    trainer = L.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        max_steps=1,
    )
    trainer.fit(module, dm.train_dataloader(), dm.val_dataloader())
    for site, p in module.edit.params.items():
        assert torch.isfinite(p).all(), site
        assert not torch.equal(p.detach().cpu(), before[site]), site
    loaded = load_intervention(resolve_run(tmp_path) / "intervention")
    assert loaded.num_parameters() == module.edit.num_parameters()
