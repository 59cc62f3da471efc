"""Attribution scores as activation scalars: ActPatch, AttrPatch and DLA against independent
computations, loading into ActivScalar, the beta search, batching, bad input and a fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_model
from safetensors.torch import load_file

import interventions.methods.attribution as A
from interventions.core.hooks import attach, last_token_logits, record
from interventions.core.sites import model_dims, site_module
from interventions.edits import ActivScalar
from interventions.edits.artifact import (
    load_intervention,
    read_intervention_config,
    save_intervention,
)
from interventions.evaluation.objectives import logit_diff
from interventions.experiments.attribution_table import compare, top_locations, top_overlap
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]
SITES = ["resid_post", "attn_out", "mlp_out"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n=2, length=6, first_diff=2, seed=0):
    """Random prompts; the corrupted ones differ from position ``first_diff`` on."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    corrupted = ids.clone()
    corrupted[:, first_diff:] = (
        ids[:, first_diff:] + 1 + torch.randint(0, 50, (1,), generator=g)
    ) % VOCAB
    corrupted[:, first_diff:] = corrupted[:, first_diff:].clamp(min=3)
    correct = torch.randint(3, VOCAB, (n,), generator=g)
    wrong = (correct + 7) % VOCAB
    ones = torch.ones_like(ids)
    return dict(
        input_ids=ids,
        attention_mask=ones,
        correct_id=correct,
        wrong_id=wrong,
        corrupted_input_ids=corrupted,
        corrupted_attention_mask=ones.clone(),
    )


class _Replace:
    """Test edit: replace the activation at one (layer, site) and column by a vector (1 row)."""

    def __init__(self, layer, site, column, value):
        self.layer, self.site, self.column, self.value = layer, site, column, value

    def points(self):
        return [(self.layer, self.site)]

    def prepare(self, ctx, beta):
        return None

    def apply(self, layer, site, h, state):
        h = h.clone()
        h[0, self.column] = self.value
        return h


def _ld(model, ids, correct, wrong):
    logits = model(input_ids=ids).logits[:, -1]
    return logit_diff(logits, correct, wrong)


def _brute_actpatch(model, batch, sites):
    """One patched forward pass per example and point, no batching, no cache."""
    layers = range(model_dims(model).num_layers)
    n, length = batch["input_ids"].shape
    out = {s: torch.zeros(n, len(layers), length) for s in sites}
    for b in range(n):
        ids = batch["input_ids"][b : b + 1]
        cor = batch["corrupted_input_ids"][b : b + 1]
        c, w = batch["correct_id"][b : b + 1], batch["wrong_id"][b : b + 1]
        points = [(layer, s) for layer in layers for s in sites]
        with torch.no_grad(), record(model, points) as acts:
            model(input_ids=cor)
        with torch.no_grad():
            clean = _ld(model, ids, c, w)
            for layer, s in points:
                for p in range(length):
                    edit = _Replace(layer, s, p, acts[(layer, s)][0, p])
                    with attach(model, edit):
                        out[s][b, layer, p] = (_ld(model, ids, c, w) - clean).item()
    return out


@pytest.mark.parametrize(
    "arch,first_diff",
    [("gpt2", 2), ("llama", 3), ("gemma2", 2), ("llama", 0), ("gpt_neox", 1), ("phi3", 2)],
)
def test_actpatch_equals_explicit_patched_forwards(arch, first_diff):
    model = tiny_model(arch)
    batch = _batch(first_diff=first_diff)
    got = A.attribution_scores(model, batch, "actpatch", SITES, chunk_size=7)
    expected = _brute_actpatch(model, batch, SITES)
    for s in SITES:
        assert got[s].shape == (2, 3, 6)
        torch.testing.assert_close(got[s], expected[s], atol=2e-5, rtol=1e-4)
        assert bool((got[s][:, :, :first_diff] == 0).all())  # causality: exactly 0 before
    assert float(got["attn_out"].abs().max()) > 1e-3  # a real signal, not all zeros


def _hand_gradients(model, ids, correct, wrong, layer, site):
    """(activation, dL/d activation) at one point, with a plain PyTorch hook on the module."""
    module, side = site_module(model, layer, site)
    assert side == "output"
    store = {}

    def hook(mod, args, output):
        h = output[0] if isinstance(output, tuple) else output
        delta = torch.zeros_like(h, requires_grad=True)
        store["h"], store["delta"] = h.detach(), delta
        new = h + delta
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            metric = _ld(model, ids, correct, wrong).sum()
            (grad,) = torch.autograd.grad(metric, store["delta"])
    finally:
        handle.remove()
    return store["h"], grad


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attrpatch_equals_hand_gradient(arch):
    model = tiny_model(arch)
    batch = _batch(first_diff=2)
    got = A.attribution_scores(model, batch, "attrpatch", SITES)
    ids, cor = batch["input_ids"], batch["corrupted_input_ids"]
    c, w = batch["correct_id"], batch["wrong_id"]
    for s in SITES:
        for layer in range(3):
            a_clean, grad = _hand_gradients(model, ids, c, w, layer, s)
            a_corr, _ = _hand_gradients(model, cor, c, w, layer, s)
            expected = ((a_corr - a_clean) * grad).sum(-1)
            expected[:, :2] = 0.0
            torch.testing.assert_close(got[s][:, layer], expected, atol=1e-6, rtol=1e-5)
    assert float(got["mlp_out"].abs().max()) > 1e-3


def test_attrpatch_is_the_derivative_of_patching():
    """Patching in ``a_clean + eps (a_corr - a_clean)`` changes L by ``eps * AttrPatch``."""
    model = tiny_model("gpt2").double()
    batch = _batch(n=1, first_diff=2)
    got = A.attribution_scores(model, batch, "attrpatch", SITES)
    ids, cor = batch["input_ids"], batch["corrupted_input_ids"]
    c, w = batch["correct_id"], batch["wrong_id"]
    eps = 1e-4
    checked = 0
    for layer, s, p in [(0, "attn_out", 3), (1, "mlp_out", 5), (2, "resid_post", 4)]:
        with torch.no_grad(), record(model, [(layer, s)]) as acts:
            model(input_ids=cor)
            a_corr = acts[(layer, s)][0, p].clone()
            model(input_ids=ids)
            a_clean = acts[(layer, s)][0, p].clone()
        diffs = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                value = a_clean + sign * eps * (a_corr - a_clean)
                with attach(model, _Replace(layer, s, p, value)):
                    diffs.append(_ld(model, ids, c, w).item())
        fd = (diffs[0] - diffs[1]) / (2 * eps)
        assert got[s][0, layer, p].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)
        checked += abs(fd) > 1e-4
    assert checked >= 2


def _hand_dla(model, batch, arch):
    ids, c, w = batch["input_ids"], batch["correct_id"], batch["wrong_id"]
    if arch == "gpt2":
        norm = model.transformer.ln_f
    else:
        norm = model.model.norm
    g = norm.weight.detach()
    w_u = model.lm_head.weight.detach()
    direction = g * (w_u[c] - w_u[w])  # [n, d]
    with torch.no_grad(), record(model, [(2, "resid_post")]) as acts:
        model(input_ids=ids)
    x = acts[(2, "resid_post")][:, -1]
    if arch == "gpt2":
        scale = (x.var(-1, unbiased=False) + norm.eps).sqrt()
        direction = direction - direction.mean(-1, keepdim=True)
    else:
        scale = (x.pow(2).mean(-1) + norm.variance_epsilon).sqrt()
    return direction / scale[:, None], x


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_dla_equals_hand_projection(arch):
    model = tiny_model(arch)
    with torch.no_grad():  # a non-trivial final norm
        norm = model.transformer.ln_f if arch == "gpt2" else model.model.norm
        norm.weight.copy_(
            torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(3)) + 0.5
        )
        if arch == "gpt2":
            norm.bias.normal_(0, 0.3)
    batch = _batch(n=3)
    got = A.attribution_scores(model, batch, "dla", SITES)
    u, x_final = _hand_dla(model, batch, arch)
    with torch.no_grad(), record(model, [(layer, s) for layer in range(3) for s in SITES]) as acts:
        model(input_ids=batch["input_ids"])
    for s in SITES:
        assert bool((got[s][:, :, :-1] == 0).all())
        for layer in range(3):
            expected = (acts[(layer, s)][:, -1] * u).sum(-1)
            torch.testing.assert_close(got[s][:, layer, -1], expected, atol=1e-5, rtol=1e-4)
    # the components plus the embedding and the norm bias add up to the clean logit difference
    embed = (
        acts[(0, "resid_post")][:, -1] - acts[(0, "attn_out")][:, -1] - acts[(0, "mlp_out")][:, -1]
    )
    total = got["attn_out"][:, :, -1].sum(1) + got["mlp_out"][:, :, -1].sum(1) + (embed * u).sum(-1)
    w_u = model.lm_head.weight.detach()
    if arch == "gpt2":
        total = total + (norm.bias * (w_u[batch["correct_id"]] - w_u[batch["wrong_id"]])).sum(-1)
    clean = _ld(model, batch["input_ids"], batch["correct_id"], batch["wrong_id"])
    torch.testing.assert_close(total, clean.detach(), atol=1e-4, rtol=1e-4)
    # the final residual's DLA is the logit difference (minus the bias term)
    assert x_final.shape == (3, 32)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "phi3", "gemma2", "gemma3_text"])
def test_final_norm_probe_measures_gain_and_kind(arch):
    model = tiny_model(arch)
    norm = A.final_norm(model)
    with torch.no_grad():
        norm.weight.normal_(0, 0.5)
    lin = A.probe_norm(norm, 32, torch.zeros(1))
    gain = norm.weight + 1 if arch.startswith("gemma") else norm.weight
    torch.testing.assert_close(lin.gain, gain.detach(), atol=1e-5, rtol=1e-5)
    assert lin.centers == (arch in ("gpt2", "gpt_neox"))
    x = torch.randn(4, 32)
    y = norm(x) - lin.bias
    torch.testing.assert_close(lin.gain * lin.project(x) / lin.scale(norm, x)[:, None], y.detach())


def test_scores_load_into_activscalar_with_the_sign_convention(tmp_path):
    model = tiny_model("llama")
    dims = model_dims(model)
    g = torch.Generator().manual_seed(0)
    scores = {"attn_out": torch.randn(3, 6, generator=g), "mlp_out": torch.randn(3, 6, generator=g)}
    scores["mlp_out"][1, 4] = -9.0  # the largest |score|
    for method, sign in (("actpatch", -1.0), ("attrpatch", -1.0), ("dla", 1.0)):
        alpha, scale = A.scores_to_alpha(scores, method)
        assert scale == 9.0
        edit = A.scalar_edit(dims, alpha)
        assert isinstance(edit, ActivScalar) and edit.positions == "all"
        assert edit.num_positions == 6 and edit.layers == [0, 1, 2]
        for s in scores:
            assert edit.params[s].shape == (3, 6, 1)
            torch.testing.assert_close(edit.params[s][..., 0].detach(), sign * scores[s] / 9.0)
        assert edit.params["mlp_out"][1, 4, 0].item() == pytest.approx(-sign)
    raw, scale = A.scores_to_alpha(scores, "dla", normalize=False)
    assert scale == 1.0 and torch.equal(raw["attn_out"], scores["attn_out"])
    # partial layers; export round trip keeps alpha
    edit = A.scalar_edit(dims, {"attn_out": scores["attn_out"][:2]}, layers=[0, 2])
    save_intervention(edit, tmp_path / "x", extra={"beta": -0.5})
    loaded = load_intervention(tmp_path / "x")
    assert torch.equal(A.edit_values(loaded)["attn_out"], scores["attn_out"][:2])
    assert read_intervention_config(tmp_path / "x")["extra"]["beta"] == -0.5


def test_beta_search_finds_the_flip_on_a_constructed_case():
    """Pick answer pairs that flip at beta = 2 and at no smaller |beta| of the grid; the search
    must return 2 with flip rate 1, and its metrics must match explicit steered passes."""
    model = tiny_model("llama")
    dims = model_dims(model)
    g = torch.Generator().manual_seed(1)
    alpha = {"attn_out": torch.randn(3, 5, generator=g), "mlp_out": torch.randn(3, 5, generator=g)}
    edit = A.scalar_edit(dims, alpha)
    ids = torch.randint(3, VOCAB, (2, 5), generator=g)
    mask = torch.ones_like(ids)
    grid = [0.25, 0.5, 1.0, 2.0]
    logits = {}
    with torch.no_grad():
        for b in [*grid, *(-m for m in grid)]:
            with attach(model, edit, beta=b):
                logits[b] = last_token_logits(model, ids, mask)
    pairs = []
    for row in range(2):
        found = None
        for c in range(3, VOCAB):
            for w in range(3, VOCAB):
                d = {b: float(v[row, c] - v[row, w]) for b, v in logits.items()}
                flips = [m for m in grid if d[m] > 0 and d[-m] < 0]
                if c != w and flips == [2.0] and d[-2.0] < -0.01 and d[2.0] > 0.01:
                    found = (c, w)
                    break
            if found:
                break
        assert found is not None
        pairs.append(found)
    batch = dict(
        input_ids=ids,
        attention_mask=mask,
        correct_id=torch.tensor([p[0] for p in pairs]),
        wrong_id=torch.tensor([p[1] for p in pairs]),
    )
    betas = [*grid, *(-m for m in grid)]
    sweep = A.sweep_betas(model, edit, [batch], betas)
    beta, table = A.choose_beta(sweep, betas)
    assert beta == 2.0
    row = sweep.at(2.0)
    assert row["flip_rate"] == 1.0 and row["effectiveness"] == 0.0
    assert A.mean_flip_beta(table) == 2.0
    assert max(r["flip_rate"] for r in table if abs(r["beta"]) < 2) == 0.0
    expected = logit_diff(logits[2.0], batch["correct_id"], batch["wrong_id"]).mean()
    assert row["logit_diff_pos"] == pytest.approx(float(expected), rel=1e-5)
    # the reverse direction of the same magnitude is the mirrored pair
    assert sweep.at(-2.0)["logit_diff_pos"] == pytest.approx(row["logit_diff_neg"])
    assert A.evaluate_edit(model, edit, [batch], 2.0)["flip_rate"] == 1.0


@pytest.mark.parametrize("method", A.METHODS)
def test_batched_equals_one_at_a_time(method):
    model = tiny_model("llama")
    batch = _batch(n=3, length=5, first_diff=1, seed=4)
    single = [
        A.attribution_scores(
            model, {k: v[i : i + 1] for k, v in batch.items()}, method, ["attn_out", "mlp_out"]
        )
        for i in range(3)
    ]
    # padded batches: one extra padding column on the left, or two on the right
    for side in ("left", "right"):
        padded = {}
        for key in ("input_ids", "corrupted_input_ids"):
            pad = torch.zeros(3, 1 if side == "left" else 2, dtype=torch.long)
            padded[key] = torch.cat([pad, batch[key]] if side == "left" else [batch[key], pad], 1)
        m = torch.cat(
            [torch.zeros(3, 1), torch.ones(3, 5)]
            if side == "left"
            else [torch.ones(3, 5), torch.zeros(3, 2)],
            1,
        ).long()
        padded.update(
            attention_mask=m,
            corrupted_attention_mask=m.clone(),
            correct_id=batch["correct_id"],
            wrong_id=batch["wrong_id"],
        )
        got = A.attribution_scores(model, padded, method, ["attn_out", "mlp_out"], chunk_size=5)
        for s in ("attn_out", "mlp_out"):
            expected = torch.cat([one[s] for one in single])
            torch.testing.assert_close(got[s], expected, atol=2e-6, rtol=1e-5)
    acc = A.ScoreAccumulator()
    for one in single:
        acc.update(one)
    whole = A.ScoreAccumulator()
    whole.update(got)
    for s in ("attn_out", "mlp_out"):
        torch.testing.assert_close(acc.mean()[s], whole.mean()[s], atol=1e-6, rtol=1e-5)
    assert acc.count == whole.count == 3


def test_bad_input_gives_clear_errors(tiny_backbone_dir):
    model = tiny_model("llama")
    batch = _batch()
    ragged = dict(batch, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]))
    with pytest.raises(ValueError, match=r"same token length.*\[5, 6\].*fixed_length=true"):
        A.attribution_scores(model, ragged, "dla")
    with pytest.raises(ValueError, match="Unknown attribution method 'eap'"):
        A.attribution_scores(model, batch, "eap")
    no_corrupted = {k: v for k, v in batch.items() if not k.startswith("corrupted")}
    for method in ("actpatch", "attrpatch"):
        with pytest.raises(ValueError, match=f"{method} patches.*corrupted_input_ids"):
            A.attribution_scores(model, no_corrupted, method)
    assert A.attribution_scores(model, no_corrupted, "dla")["attn_out"].shape == (2, 3, 6)
    bad_corrupted = dict(batch, corrupted_attention_mask=torch.tensor([[0] + [1] * 5, [1] * 6]))
    with pytest.raises(ValueError, match="same token length as its clean prompt"):
        A.attribution_scores(model, bad_corrupted, "actpatch")
    with pytest.raises(ValueError, match="site 'attn_z' is not supported"):
        A.attribution_scores(model, batch, "dla", ["attn_z"])
    with pytest.raises(ValueError, match="nonzero"):
        A.check_beta_grid([0.0, 1.0])
    with pytest.raises(ValueError, match="every score is zero"):
        A.scores_to_alpha({"attn_out": torch.zeros(3, 6)}, "actpatch")
    with pytest.raises(ValueError, match="Unknown attribution method"):
        A.AttributionScalarModule(backbone=tiny_backbone_dir, method="patch")


def test_top_overlap():
    a = {"attn_out": torch.tensor([[3.0, 0.0, -2.0]]), "mlp_out": torch.tensor([[0.5, -4.0, 0.0]])}
    b = {"attn_out": torch.tensor([[1.0, 9.0, 0.0]]), "mlp_out": torch.tensor([[0.0, 8.0, 0.1]])}
    assert top_locations(a, [7], k=2) == {(7, "mlp_out", 1), (7, "attn_out", 0)}
    assert top_overlap(a, b, [7], k=2) == 0.5  # (7, mlp_out, 1) is in both
    assert top_locations(a, [7], k=10) == {
        (7, "attn_out", 0), (7, "attn_out", 2), (7, "mlp_out", 0), (7, "mlp_out", 1)
    }  # fmt: skip


def _cli(config, backbone, root, *extra):
    from interventions.cli import build_cli

    return build_cli(
        [
            "--config", str(ROOT / config),
            f"--model.backbone={backbone}",
            f"--trainer.default_root_dir={root}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--data.num_train=4", "--data.num_val=2", "--data.num_test=3", "--data.batch_size=2",
            "--model.beta_grid=[-4,-1,-0.25,0.25,1,4]",
            *extra,
        ],
        run=False,
    )  # fmt: skip


def test_fit_every_method_and_the_comparison_table(tiny_backbone_dir, tmp_path):
    """The driver trains the three runs through train.py's CLI and Trainer (fit_run), then
    compares them with a (here: random) ActivScalar on the same points."""
    from interventions.experiments.attribution_table import main

    runs, out = tmp_path / "runs", tmp_path / "cmp"
    passthrough = [
        f"--model.backbone={tiny_backbone_dir}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--data.num_train=4", "--data.num_val=2", "--data.num_test=3", "--data.batch_size=2",
        "--model.beta_grid=[-4,-1,-0.25,0.25,1,4]",
    ]  # fmt: skip
    cli = _cli("configs/attribution/ioi.yaml", tiny_backbone_dir, tmp_path / "x")
    model, dm = cli.model.model, cli.datamodule
    assert dm.backbone == tiny_backbone_dir  # linked to model.backbone
    torch.manual_seed(0)
    length = dm.prompt_length
    learned = A.scalar_edit(
        model_dims(model), {s: torch.randn(3, length) for s in ("attn_out", "mlp_out")}
    )
    save_intervention(learned, tmp_path / "learned")
    with pytest.raises(FileNotFoundError, match="No learned ActivScalar"):
        main(["--learned", str(tmp_path / "missing"), "--runs", str(runs)])
    rows = main(
        ["--config", str(ROOT / "configs/attribution/ioi.yaml"), "--runs", str(runs),
         "--out", str(out), "--learned", str(tmp_path / "learned"), "--", *passthrough]
    )  # fmt: skip
    assert list(rows) == ["ActPatch", "AttrPatch", "DLA", "ActivScalar"]
    assert rows["ActivScalar"]["top20_overlap"] == 1.0
    learned_top = top_locations(A.edit_values(learned), learned.layers)
    for method, label in (("actpatch", "ActPatch"), ("attrpatch", "AttrPatch"), ("dla", "DLA")):
        run = runs / method
        metrics = json.loads((resolve_run(run) / "metrics.json").read_text())
        assert metrics["method"] == method and metrics["num_train"] == 4
        assert metrics["beta"] in (-4, -1, -0.25, 0.25, 1, 4)
        assert len(metrics["search"]) == 6
        edit = load_intervention(resolve_run(run) / "intervention")
        assert (
            read_intervention_config(resolve_run(run) / "intervention")["extra"]["beta"]
            == metrics["beta"]
        )
        scores = load_file(str(resolve_run(run) / "scores.safetensors"))
        scale = max(float(v.abs().max()) for v in scores.values())
        for s in ("attn_out", "mlp_out"):
            expected = A.ALPHA_SIGN[method] * scores[s] / scale
            torch.testing.assert_close(A.edit_values(edit)[s], expected)
        if method == "dla":
            assert bool((scores["attn_out"][:, :-1] == 0).all())
        assert (resolve_run(run) / "plots" / "heatmap.png").stat().st_size > 1000
        assert (resolve_run(run) / "plots" / "logits_vs_beta.png").stat().st_size > 1000
        assert (resolve_run(run) / "checkpoints" / "last.ckpt").is_file()
        # the table's numbers: the exported edit at the exported beta on the test split
        again = A.evaluate_edit(model, edit, dm.test_dataloader(), metrics["beta"])
        assert again["effectiveness"] == pytest.approx(metrics["test"]["effectiveness"], abs=1e-5)
        assert rows[label]["effectiveness"] == pytest.approx(again["effectiveness"], abs=1e-5)
        assert rows[label]["flip_rate"] == pytest.approx(again["flip_rate"])
        assert -1e9 < again["effectiveness"] <= 0 and 0 <= again["flip_rate"] <= 1
        top = top_locations(A.edit_values(edit), edit.layers)
        assert len(top) == (6 if method == "dla" else 20)  # DLA: the last position only
        assert rows[label]["top20_overlap"] == len(top & learned_top) / 20
    table = json.loads((out / "table.json").read_text())
    assert table["methods"] == rows
    assert table["top20_overlap_matrix"]["ActPatch"]["ActPatch"] == 1.0
    assert "| DLA |" in (out / "table.md").read_text()
    assert (out / "heatmaps.png").stat().st_size > 5000
    # a comparison of edits on other points is refused
    other = A.scalar_edit(model_dims(model), {"attn_out": torch.ones(3, length)})
    with pytest.raises(ValueError, match="same points"):
        compare(model, dm, {"X": (other, 1.0), "ActivScalar": (learned, 1.0)})


def test_run_folder_named_after_another_method_is_refused(tiny_backbone_dir, tmp_path):
    cli = _cli(
        "configs/attribution/ccc.yaml",
        tiny_backbone_dir,
        tmp_path / "actpatch",
        "--model.method=dla",
    )
    with pytest.raises(ValueError, match="named after 'actpatch'.*attribution|default_root_dir"):
        cli.trainer.fit(cli.model, cli.datamodule)
