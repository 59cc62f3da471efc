"""Models bigger than one device and long prompts: a backbone dispatched by Accelerate (some layers
offloaded to disk or CPU) gives the same logits, edits and gradients as the plain one; activation
checkpointing through the frozen backbone gives the same gradients and keeps fewer activations;
sharding strategies are refused; the CLI takes the options."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from accelerate import cpu_offload
from conftest import ARCHS, random_batch, tiny_model
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

from datamodules import IOIDataModule
from interventions.core.backbone import load_backbone
from interventions.core.dispatch import check_strategy, input_device, is_dispatched
from interventions.core.hooks import attach, checkpoint_layers, last_token_logits, record
from interventions.core.kv_cache import output_cache, with_cache
from interventions.core.sites import layers, model_dims
from interventions.edits import ActivScalar, SteerVec
from interventions.methods.a2a.module import A2AModule
from interventions.methods.attribution.module import AttributionScalarModule
from interventions.methods.attribution.scores import attribution_scores
from interventions.methods.austeer.module import AUSteerModule
from interventions.methods.caa.module import CAAModule
from interventions.methods.eap.eap_ig import eap_ig
from interventions.methods.scaling.module import InterventionModule
from interventions.methods.w2s.module import W2SModule

# the tiny Llama of ``tiny_backbone_dir`` with its last two decoder layers offloaded to disk
DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}
SITES = ["attn_out", "mlp_out", "attn_z", "mlp_act", "resid_post"]


def _edits(model) -> list:
    """An ActivScalar and a SteerVec with clearly nonzero values on every layer and site kind."""
    torch.manual_seed(1)
    dims = model_dims(model)
    return [
        ActivScalar(dims, sites=SITES, positions="last", init_std=0.3),
        # prompt positions as a list: positions="all" would refuse the prompts shorter than 7
        SteerVec(dims, sites=SITES, positions=list(range(7)), init_std=0.3),
    ]


def _batch(n=4, length=6, seed=0):
    ids, mask, _ = random_batch(n, [length] * n, "left", seed=seed)
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=ids + 1000,
        attention_mask=mask,
        correct_id=torch.randint(0, 5000, (n,), generator=g),
        wrong_id=torch.randint(5000, 10000, (n,), generator=g),
    )


class _SavedBytes:
    """Bytes of the activations autograd keeps for the backward pass (the weights it also keeps
    are not counted; inside a checkpointed layer nothing is kept)."""

    def __init__(self, model) -> None:
        self.bytes = 0
        self._weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta" and t.untyped_storage().data_ptr() not in self._weights:
            self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def _grads(model, edit, ids, mask, beta=1.0):
    """Logits at the last token with ``edit`` attached, ``d sum(logsumexp) / d params`` (the
    backward runs after the ``with attach`` block, as in training) and the saved bytes."""
    edit.zero_grad()
    with _SavedBytes(model) as saved, attach(model, edit, beta=beta):
        logits = last_token_logits(model, ids, mask)
    logits.logsumexp(-1).sum().backward()
    return logits.detach(), [p.grad.clone() for p in edit.parameters()], saved.bytes


# ------------------------------------------------------------------------------ device map


def test_disk_offloaded_backbone_gives_same_logits(tiny_backbone_dir, tmp_path):
    plain, _ = load_backbone(tiny_backbone_dir)
    off, _ = load_backbone(tiny_backbone_dir, device_map=DISK_MAP, offload_folder=tmp_path)
    assert is_dispatched(off) and not is_dispatched(plain)
    assert layers(off)[2].mlp.down_proj.weight.device.type == "meta"  # really on disk
    assert input_device(off) == torch.device("cpu")
    ids, mask, _ = random_batch(3, [7, 4, 6], "left")
    ids = ids + 1000
    with torch.no_grad():
        torch.testing.assert_close(
            off(input_ids=ids, attention_mask=mask).logits,
            plain(input_ids=ids, attention_mask=mask).logits,
            rtol=0,
            atol=1e-6,
        )
        for edit in _edits(plain):
            beta = torch.tensor([1.0, -2.0, 0.5])
            with attach(plain, edit, beta=beta):
                want = last_token_logits(plain, ids, mask)
            with attach(off, edit, beta=beta):
                got = last_token_logits(off, ids, mask)
            assert not torch.allclose(want, last_token_logits(plain, ids, mask))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_disk_offloaded_training_step_and_fit_match(tiny_backbone_dir, tmp_path):
    def module(num_positions=6, **kw):
        torch.manual_seed(0)
        return InterventionModule(
            backbone=tiny_backbone_dir,
            num_positions=num_positions,
            sites=SITES,
            num_samples=0,
            **kw,
        )

    plain = module()
    off = module(device_map=DISK_MAP, offload_folder=str(tmp_path / "offload"))
    off.to("cpu")  # the module's own params move; the dispatched backbone stays where it is
    assert layers(off.model)[1].self_attn.q_proj.weight.device.type == "meta"
    batch = _batch()
    for m in (plain, off):
        m.loss(batch)[0]["loss"].backward()
    for (name, p), q in zip(plain.edit.named_parameters(), off.edit.parameters(), strict=True):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6)

    dm = IOIDataModule(backbone=tiny_backbone_dir, num_train=8, num_val=4, num_test=4, batch_size=4)
    dm.setup("fit")
    fitted = []
    offloaded = dict(device_map=DISK_MAP, offload_folder=str(tmp_path / "o"))
    for name, kw in (("plain", {}), ("offloaded", offloaded)):
        m = module(dm.prompt_length, **kw)
        L.seed_everything(0)
        trainer = L.Trainer(
            default_root_dir=str(tmp_path / name), accelerator="cpu", max_steps=2, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        trainer.fit(m, dm.train_dataloader(), dm.val_dataloader())
        fitted.append([p.detach() for p in m.edit.parameters()])
    for p, q in zip(*fitted, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


def test_cpu_offload_hooks_gradients_and_checkpointing(tmp_path):
    """Every weight offloaded (``accelerate.cpu_offload``, buffers too): the parameters are on the
    meta device, inputs go to the execution device, and edits and gradients (also with activation
    checkpointing, which reloads the weights in the recomputation) are unchanged."""
    plain = tiny_model("llama")
    off = cpu_offload(tiny_model("llama"), execution_device="cpu", offload_buffers=True)
    assert next(off.parameters()).device.type == "meta"
    assert is_dispatched(off) and input_device(off) == torch.device("cpu")
    ids, mask, _ = random_batch(3, [7, 5, 6], "left")
    for edit in _edits(plain):
        want = _grads(plain, edit, ids, mask, beta=torch.tensor([1.0, -1.0, 2.0]))
        for checkpointing in (False, True):
            checkpoint_layers(off, enabled=checkpointing)
            got = _grads(off, edit, ids, mask, beta=torch.tensor([1.0, -1.0, 2.0]))
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
            for g, w in zip(got[1], want[1], strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_sharding_strategies_are_refused(tiny_backbone_dir, tmp_path):
    with pytest.raises(ValueError, match="FSDPStrategy is not supported.*device_map auto"):
        check_strategy(FSDPStrategy())
    check_strategy(SingleDeviceStrategy("cpu"))  # one device, DDP: fine

    class DeepSpeedStrategy(SingleDeviceStrategy):  # stands in for the real one (not installed)
        pass

    module = InterventionModule(backbone=tiny_backbone_dir, num_positions=6, num_samples=0)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="outside the module tree"):
        module.configure_model()
    module._trainer = None
    trainer = L.Trainer(
        default_root_dir=str(tmp_path), strategy=DeepSpeedStrategy("cpu"), max_steps=1,
        logger=False, enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    batch = {k: v[None] for k, v in _batch(1).items()}
    loader = torch.utils.data.DataLoader([{k: v[0] for k, v in batch.items()}], batch_size=1)
    with pytest.raises(ValueError, match="DeepSpeedStrategy is not supported"):
        trainer.fit(module, loader)  # refused in configure_model, before any step
    assert trainer.global_step == 0


def test_load_options_are_checked(tiny_backbone_dir, tmp_path):
    with pytest.raises(ValueError, match="only apply with a device_map"):
        load_backbone(tiny_backbone_dir, max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="cannot be merged into a model loaded with a device_map"):
        load_backbone(tiny_backbone_dir, device_map="auto", adapter=str(tmp_path))


@pytest.mark.parametrize(
    "cls",
    [InterventionModule, CAAModule, AUSteerModule, A2AModule, AttributionScalarModule, W2SModule],
)
def test_every_module_takes_the_big_model_flags(cls):
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model")
    ns = parser.parse_args(
        [
            "--model.device_map", "auto",
            "--model.max_memory", "{0: 20GiB, cpu: 60GiB}",
            "--model.offload_folder", "/tmp/offload",
        ]
    )  # fmt: skip
    assert ns.model.device_map == "auto"
    assert ns.model.max_memory == {0: "20GiB", "cpu": "60GiB"}
    ns = parser.parse_args(["--model.device_map", "{model.layers.1: disk, lm_head: 0}"])
    assert ns.model.device_map == {"model.layers.1": "disk", "lm_head": 0}
    if cls in (InterventionModule, A2AModule, AttributionScalarModule):
        assert parser.parse_args(["--model.activation_checkpointing", "true"]).model[
            "activation_checkpointing"
        ]


def test_cli_trains_through_a_disk_offloaded_backbone(tiny_backbone_dir, tmp_path):
    from interventions.cli import build_cli

    device_map = "{" + ", ".join(f"{k}: {v}" for k, v in DISK_MAP.items()) + "}"
    cli = build_cli(
        [
            "--model", "InterventionModule", "--data", "IOIDataModule",
            f"--model.backbone={tiny_backbone_dir}", "--model.num_samples=0",
            f"--model.device_map={device_map}", f"--model.offload_folder={tmp_path / 'off'}",
            "--model.activation_checkpointing=true",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
            "--data.num_train=4", "--data.num_val=2", "--data.num_test=2",
        ],
        run=False,
    )  # fmt: skip
    assert cli.model.model.hf_device_map["model.layers.2"] == "disk"
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 1


# ------------------------------------------------------------------------------ checkpointing


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_checkpointing_same_gradients_fewer_saved_tensors(arch):
    model = tiny_model(arch)
    ids, mask, _ = random_batch(3, [7, 5, 6], "left")
    for edit in _edits(model):
        want = _grads(model, edit, ids, mask, beta=torch.tensor([1.0, -1.0, 2.0]))
        checkpoint_layers(model)
        got = _grads(model, edit, ids, mask, beta=torch.tensor([1.0, -1.0, 2.0]))
        checkpoint_layers(model, enabled=False)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
        for g, w in zip(got[1], want[1], strict=True):
            assert w.abs().sum() > 0
            torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
        assert got[2] < 0.5 * want[2], (got[2], want[2])  # saved activations [bytes]
        assert _grads(model, edit, ids, mask, beta=torch.tensor([1.0, -1.0, 2.0]))[2] == want[2]


class _Counting:
    """Wraps an edit and counts its ``apply`` calls."""

    def __init__(self, edit, records: bool = False) -> None:
        self.edit, self.records, self.calls = edit, records, 0

    def points(self):
        return self.edit.points()

    def prepare(self, ctx, beta):
        return self.edit.prepare(ctx, beta)

    def apply(self, layer, site, h, state):
        self.calls += 1
        return h if self.records else self.edit.apply(layer, site, h, state)


def test_recomputation_replays_edits_once_and_skips_recorders():
    model = tiny_model("llama")
    checkpoint_layers(model)
    ids, mask, _ = random_batch(2, [6, 4], "left")
    dims = model_dims(model)
    torch.manual_seed(0)
    inner = SteerVec(dims, sites=["attn_out", "mlp_act"], positions="last", init_std=0.3)
    edit, reader = _Counting(inner), _Counting(inner, records=True)
    points = [(layer, "mlp_out") for layer in range(dims.num_layers)]
    with record(model, points, detach=False) as acts, attach(model, reader):
        with attach(model, edit, beta=2.0):
            logits = last_token_logits(model, ids, mask)
        seen = dict(acts)
    n = len(inner.points())
    assert edit.calls == reader.calls == n
    # backward after the blocks, inside another one: the recomputation uses the layer's hooks
    # and state of the forward pass (beta = 2), not those attached now
    with attach(model, SteerVec(dims, ["attn_out"], positions="last", init_std=1.0), beta=-5):
        logits.logsumexp(-1).sum().backward()
    assert edit.calls == 2 * n and reader.calls == n  # the edit replayed, the recorder not
    assert all(acts[k] is seen[k] for k in points)  # nothing recorded twice
    checkpoint_layers(model, enabled=False)
    got = [p.grad.clone() for p in inner.parameters()]
    inner.zero_grad()
    with attach(model, inner, beta=2.0):
        want_logits = last_token_logits(model, ids, mask)
    want_logits.logsumexp(-1).sum().backward()
    torch.testing.assert_close(logits.detach(), want_logits.detach(), rtol=0, atol=0)
    for g, p in zip(got, inner.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2 passes its cache positionally
def test_checkpointing_with_a_filled_cache_runs_plain(arch):
    """A grad-enabled call continuing a cache cannot be recomputed (the cache would be appended
    twice): it runs unchecked and gives the same logits and gradients."""
    model = tiny_model(arch)
    ids, _, _ = random_batch(2, [6, 6], "left")
    edit = SteerVec(model_dims(model), ["attn_out", "mlp_out"], positions="last", init_std=0.3)

    def run():
        with torch.no_grad():
            cache = output_cache(model(input_ids=ids[:, :-1], use_cache=True))
        edit.zero_grad()
        with attach(model, edit):
            out = model(input_ids=ids[:, -1:], **with_cache(model, cache))
        out.logits.sum().backward()
        return out.logits.detach(), [p.grad.clone() for p in edit.parameters()]

    want = run()
    checkpoint_layers(model)
    got = run()
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_gradient_methods_unchanged_by_checkpointing_and_offload():
    """EAP-IG (A2A), attribution patching and direct logit attribution read gradients and weights
    themselves: the same scores with activation checkpointing and with every weight offloaded."""
    plain = tiny_model("llama")
    checkpointed = tiny_model("llama")
    checkpoint_layers(checkpointed)
    offloaded = cpu_offload(tiny_model("llama"), execution_device="cpu")
    ids, mask, _ = random_batch(2, [6, 6], "left", seed=1)
    corrupted, _, _ = random_batch(2, [6, 6], "left", seed=2)
    correct, wrong = torch.tensor([5, 6]), torch.tensor([7, 8])
    batch = dict(
        input_ids=ids, attention_mask=mask, corrupted_input_ids=corrupted,
        corrupted_attention_mask=mask, correct_id=correct, wrong_id=wrong,
    )  # fmt: skip
    sites = ["attn_out", "mlp_out", "resid_post"]
    for per_head in (False, True):
        kw = dict(clean_mask=mask, corrupted_mask=mask, steps=2, per_head_inputs=per_head)
        want = eap_ig(plain, ids, corrupted, correct, wrong, **kw).scores
        for model in (checkpointed, offloaded):
            got = eap_ig(model, ids, corrupted, correct, wrong, **kw).scores
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, equal_nan=True)
    for method in ("attrpatch", "dla"):
        want = attribution_scores(plain, batch, method, sites)
        for model in (checkpointed, offloaded):
            got = attribution_scores(model, batch, method, sites)
            for site in sites:
                torch.testing.assert_close(got[site], want[site], rtol=0, atol=1e-6)


def test_scaling_module_activation_checkpointing(tiny_backbone_dir):
    def step(**kw):
        torch.manual_seed(0)
        module = InterventionModule(
            backbone=tiny_backbone_dir, num_positions=6, sites=SITES, num_samples=0, **kw
        )
        module.loss(_batch())[0]["loss"].backward()
        grads = [p.grad for p in module.edit.parameters()]
        with _SavedBytes(module.model) as saved:  # the backbone's part (not the vocab-wide loss)
            module.three_way_logits(_batch())
        return grads, saved.bytes

    want, want_bytes = step()
    got, got_bytes = step(activation_checkpointing=True)
    for g, w in zip(got, want, strict=True):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    assert got_bytes < 0.5 * want_bytes, (got_bytes, want_bytes)
