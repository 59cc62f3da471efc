"""Precision: float32 master weights under half-precision backbones, float32 edit arithmetic,
no NaN export, end-of-fit evaluation in the validation's precision context, load on a device."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
from conftest import random_batch, tiny_model

from datamodules import IOIDataModule
from interventions.core.hooks import attach, last_token_logits, record
from interventions.core.sites import model_dims, point_module
from interventions.edits import (
    ActivScalar,
    AUScale,
    AUShift,
    DynScalar,
    NonFiniteEditError,
    SteerVec,
    load_intervention,
    save_intervention,
)
from interventions.methods.scaling.module import InterventionModule
from interventions.reporting.run_folder import resolve_run

# Metrics of a half-precision fit may differ from the 32-true fit by the rounding of its
# backbone: measured max |difference| 1e-4 (16-true) and 6e-4 (bf16-true) on logit
# differences of about 0.07, whose change by the trained edit is about 4e-3.
LOGIT_TOL = 1.5e-3
FAITHFULNESS_TOL = 5e-6  # faithfulness is about -2.7e-5; measured differences <= 1.2e-6
LOGIT_METRICS = (
    "effectiveness",
    "effectiveness_margin",
    "logit_diff_pos",
    "logit_diff_neg",
    "logit_diff_clean",
)


def _fit(backbone, root, precision, callbacks=(), **module_kw):
    L.seed_everything(0)
    module = InterventionModule(backbone=backbone, lr=0.05, **module_kw)
    dm = IOIDataModule(backbone=backbone, num_train=8, num_val=4, num_test=4, batch_size=8)
    trainer = L.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        precision=precision,
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True),
            *callbacks,
        ],
    )
    trainer.fit(module, dm)
    return module, trainer


@pytest.fixture(scope="module")
def fp32_metrics(tiny_backbone_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp32")
    _fit(tiny_backbone_dir, root, "32-true")
    return json.loads((resolve_run(root) / "metrics.json").read_text())


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
def test_true_half_precision_fit_is_finite_float32_and_close_to_32_true(
    tiny_backbone_dir, tmp_path, fp32_metrics, precision
):
    module, trainer = _fit(tiny_backbone_dir, tmp_path, precision)
    dtype = torch.float16 if precision == "16-true" else torch.bfloat16
    assert module.model.dtype == dtype  # the backbone took the trainer's precision ...
    for p in module.edit.parameters():  # ... the master weights did not
        assert p.dtype == torch.float32
    states = [v for s in trainer.optimizers[0].state.values() for v in s.values()]
    assert states and all(v.dtype == torch.float32 for v in states)  # Adam's moments
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        got, ref = metrics[split], fp32_metrics[split]
        for name, value in got.items():
            assert torch.isfinite(torch.tensor(value)), (split, name)
        for name in LOGIT_METRICS:
            assert got[name] == pytest.approx(ref[name], abs=LOGIT_TOL), (split, name)
        assert got["faithfulness"] == pytest.approx(ref["faithfulness"], abs=FAITHFULNESS_TOL)
        assert got["flip_rate"] == ref["flip_rate"]
    # on the prompts it was trained on, the edit moves the logit difference both ways (by more
    # than the tolerance), as in float32
    train = metrics["train"]
    assert train["logit_diff_pos"] - train["logit_diff_clean"] > 2e-3
    assert train["logit_diff_neg"] - train["logit_diff_clean"] < -2e-3
    exported = load_intervention(resolve_run(tmp_path) / "intervention")
    assert all(
        torch.isfinite(p).all() and p.dtype == torch.float32 for p in exported.params.values()
    )


def test_casts_keep_master_weights_float32(tiny_backbone_dir):
    module = InterventionModule(backbone=tiny_backbone_dir, num_positions=6)
    module.to(torch.bfloat16)
    assert module.model.dtype == torch.bfloat16
    assert {p.dtype for p in module.edit.parameters()} == {torch.float32}
    module.half()
    assert module.model.dtype == torch.float16
    assert {p.dtype for p in module.edit.parameters()} == {torch.float32}
    module.double()  # a widening cast is kept (gradient checks, 64-true)
    assert {p.dtype for p in module.edit.parameters()} == {torch.float64}


def test_bf16_mixed_final_metrics_equal_the_last_validation(tiny_backbone_dir, tmp_path):
    """The end-of-fit evaluation runs under the trainer's precision context (autocast here),
    so its val numbers are the last validation epoch's (same parameters, same data)."""
    _, trainer = _fit(tiny_backbone_dir, tmp_path, "bf16-mixed")
    final = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())["val"]
    logged = trainer.callback_metrics
    for name in ("effectiveness", "faithfulness", "logit_diff_pos", "logit_diff_neg"):
        assert final[name] == pytest.approx(float(logged[f"val/{name}"]), abs=1e-7, rel=1e-6)


# ------------------------------------------------------------------------------ edit arithmetic
def _by_hand(edit, layer, site, h, beta):
    """The edit of ``h`` [batch, seq, width] (bf16) computed independently: in float32 from the
    float32 parameters, cast to bfloat16 at the end.  Every position is on (no padding)."""
    row = edit.layers.index(layer)
    p = edit.params[site].detach()[row]  # float32
    x = h.float()
    b = beta.float()[:, None, None]  # [batch, 1, 1]
    seq = h.shape[1]
    if isinstance(edit, ActivScalar):  # positions="all": parameter slot t = token t
        alpha = p[:seq]  # [seq, units]
        units = alpha.shape[-1]
        xu = x.unflatten(-1, (units, -1))  # [batch, seq, units, width/units]
        out = (xu * (1 + b[..., None] * alpha[None, :, :, None])).flatten(-2)
    elif isinstance(edit, SteerVec):
        out = x + b * p[:seq][None]
    elif isinstance(edit, DynScalar):
        units = p.shape[0]
        xu = x.double().unflatten(-1, (units, -1))
        g = p.double()
        alpha = (xu * g).sum(-1) / (xu.norm(dim=-1) + edit.eps)  # [batch, seq, units]
        out = (xu * (1 + b.double()[..., None] * alpha[..., None])).flatten(-2)
    else:  # AUScale / AUShift: only the nonzero dims change
        values = p[0]
        on = values != 0
        new = x * (1 + b * values) if isinstance(edit, AUScale) else x + b * values
        out = torch.where(on, new, x)
    return out.to(h.dtype)


def _edit(kind, dims, seq):
    torch.manual_seed(3)
    if kind == "activscalar":
        edit = ActivScalar(dims, ["attn_z", "mlp_out"], [0, 2], "all", seq)
    elif kind == "steervec":
        edit = SteerVec(dims, ["resid_post"], [1], "all", seq)
    elif kind == "dynscalar":
        edit = DynScalar(dims, ["attn_z", "mlp_act"], [0, 1], "all")
    else:
        cls = AUScale if kind == "auscale" else AUShift
        edit = cls(dims, ["mlp_act", "attn_out"], [1, 2], "all")
    with torch.no_grad():
        for p in edit.parameters():
            # small values: 1 + beta * alpha in bfloat16 would round most of them to 1
            p.copy_(torch.randn(p.shape) * 0.02)
            if kind in ("auscale", "aushift"):
                p.mul_(torch.rand(p.shape) < 0.3)  # most dims not steered
    return edit


@pytest.mark.parametrize("kind", ["activscalar", "steervec", "dynscalar", "auscale", "aushift"])
def test_edit_on_bf16_model_is_computed_in_float32(kind):
    model = tiny_model("llama").to(torch.bfloat16)
    ids, mask, _ = random_batch(3, [7, 7, 7], "left")
    edit = _edit(kind, model_dims(model), seq=7)
    beta = torch.tensor([1.0, -1.0, 0.7])
    with record(model, edit.points()) as after:
        with attach(model, edit, beta=beta):
            with record(model, edit.points()) as before:
                edited = last_token_logits(model, ids, mask)
    differs_from_bf16_arithmetic = False
    for layer, site in edit.points():
        h, out = before[(layer, site)], after[(layer, site)]
        assert out.dtype == torch.bfloat16
        expected = _by_hand(edit, layer, site, h, beta)
        if kind == "dynscalar":  # a float32 reduction vs a float64 one: at most 1 bf16 ulp
            torch.testing.assert_close(out.float(), expected.float(), rtol=2**-7, atol=1e-6)
        else:
            assert torch.equal(out, expected), (layer, site)
        # the old arithmetic (parameters cast to bfloat16 first) gives other values
        naive = edit.params[site].detach()[edit.layers.index(layer)].to(h.dtype)
        if kind == "activscalar":
            scale = 1 + beta.to(h.dtype)[:, None, None] * naive[:7][None]
            old = (h.unflatten(-1, (naive.shape[-1], -1)) * scale[..., None]).flatten(-2)
            differs_from_bf16_arithmetic |= not torch.equal(old, out)
    if kind == "activscalar":
        assert differs_from_bf16_arithmetic
    # the edit acts on the logits as the hand computation does (plain torch hooks, no attach)
    handles = []
    for layer, site in edit.points():
        module, side = point_module(model, layer, site)
        if side == "output":

            def hook(mod, args, output, layer=layer, site=site):
                h = output[0] if isinstance(output, tuple) else output
                new = _by_hand(edit, layer, site, h, beta)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handles.append(module.register_forward_hook(hook))
        else:

            def pre(mod, args, layer=layer, site=site):
                return (_by_hand(edit, layer, site, args[0], beta), *args[1:])

            handles.append(module.register_forward_pre_hook(pre))
    try:
        by_hand = last_token_logits(model, ids, mask)
    finally:
        for handle in handles:
            handle.remove()
    if kind == "dynscalar":
        torch.testing.assert_close(edited.float(), by_hand.float(), rtol=0.02, atol=0.02)
    else:
        assert torch.equal(edited, by_hand)
    assert edited.dtype == torch.bfloat16 and torch.isfinite(edited).all()


# ------------------------------------------------------------------------------ no NaN export
class _PoisonParams(L.Callback):
    """After training (before the end-of-fit export) the edit becomes NaN."""

    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            next(iter(pl_module.edit.params.values())).view(-1)[0] = float("nan")


def test_nan_edit_is_not_exported_and_metrics_are_kept(tiny_backbone_dir, tmp_path):
    with pytest.raises(NonFiniteEditError) as err:
        _fit(tiny_backbone_dir, tmp_path, "16-true", callbacks=[_PoisonParams()])
    message = str(err.value)
    assert "Refusing to export the ActivScalar" in message and "attn_out" in message
    assert "precision='16-true'" in message and "precision='32-true'" in message
    assert "metrics.json" in message and "last.ckpt" in message
    assert (resolve_run(tmp_path) / "metrics.json").is_file()  # what was computed before is kept
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert not (resolve_run(tmp_path) / "intervention").exists()
    # save_intervention itself refuses too
    module = InterventionModule(backbone=tiny_backbone_dir, num_positions=6)
    with torch.no_grad():
        module.edit.params["mlp_out"].fill_(float("inf"))
    with pytest.raises(NonFiniteEditError, match=r"site\(s\) \['mlp_out'\].*32-true"):
        save_intervention(module.edit, tmp_path / "x")
    assert not (tmp_path / "x").exists()


class _BreakBackbone(L.Callback):
    """From the second epoch on, the backbone's final norm is NaN: the loss is not finite."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            pl_module.model.model.norm.weight.fill_(float("nan"))


def test_non_finite_training_stops_at_once(tiny_backbone_dir, tmp_path):
    with pytest.raises(NonFiniteEditError) as err:
        _fit(tiny_backbone_dir, tmp_path, "bf16-true", callbacks=[_BreakBackbone()])
    message = str(err.value)
    assert "Training stopped at step" in message and "(epoch 1)" in message
    assert "precision='bf16-true' with backbone dtype bfloat16" in message
    assert "precision='32-true'" in message and "last.ckpt" in message
    assert (
        not (resolve_run(tmp_path) / "intervention").exists()
        and not (resolve_run(tmp_path) / "metrics.json").exists()
    )


# ------------------------------------------------------------------------------ load on a device
def test_load_on_device_and_attach_across_dtypes(tmp_path):
    model = tiny_model("llama")
    dims = model_dims(model)
    edit = _edit("activscalar", dims, seq=7)
    save_intervention(edit, tmp_path / "e")
    ids, mask, _ = random_batch(3, [7, 7, 7], "left")
    for device in ("cpu", torch.device("cpu")):
        loaded = load_intervention(tmp_path / "e", device=device)
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.parameters())
    with attach(model, loaded, beta=-1.0):
        ref = last_token_logits(model, ids, mask)  # float32 edit, float32 model
    # float64 edit values on a float32 model: computed in float32, same logits
    with attach(model, copy.deepcopy(loaded).double(), beta=-1.0):
        wide = last_token_logits(model, ids, mask)
    assert wide.dtype == torch.float32 and torch.equal(wide, ref)
    # float32 edit values on a bfloat16 copy of the model: the model's dtype comes out
    low = copy.deepcopy(model).to(torch.bfloat16)
    with attach(low, loaded, beta=-1.0):
        got = last_token_logits(low, ids, mask)
    with attach(low, loaded, beta=0.0):
        clean = last_token_logits(low, ids, mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=0.05, atol=0.02)
    assert not torch.equal(got, clean)  # the edit acts


# ------------------------------------------------------------------ bfloat16 on a CPU without it
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from interventions.core.dispatch import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert cpu_has_native_bf16(str(info)) is False  # AVX-512 alone emulates bfloat16
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16(str(info)) is True
    info.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(str(info)) is True
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is None  # not Linux: not known


@pytest.mark.parametrize(
    ("precision", "native", "warns"),
    [
        ("bf16-mixed", False, True),
        ("bf16-true", False, True),
        ("bf16-mixed", True, False),
        ("bf16-mixed", None, False),  # unknown CPU: no guess
        ("32-true", False, False),
        ("16-mixed", False, True),  # Lightning runs float16 autocast on a CPU as bf16-mixed
        ("64-true", False, False),
    ],
)
def test_bf16_on_an_emulating_cpu_is_warned_about(
    tiny_backbone_dir, tmp_path, monkeypatch, precision, native, warns
):
    import warnings

    from interventions.core import dispatch

    monkeypatch.setattr(dispatch, "cpu_has_native_bf16", lambda: native)
    module = InterventionModule(backbone=tiny_backbone_dir, num_positions=6, num_samples=0)
    trainer = L.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", precision=precision, max_steps=1,
        logger=False, enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    module._trainer = trainer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.configure_model()
    messages = [str(w.message) for w in caught if "native bfloat16" in str(w.message)]
    assert len(messages) == int(warns)
    if warns:
        assert "precision='bf16-" in messages[0] and "--trainer.precision 32-true" in messages[0]
