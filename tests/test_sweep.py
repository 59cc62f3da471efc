"""The layer sweep, its cache, CAA vectors and L2S, on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHS, random_batch, tiny_model

import interventions.evaluation.sweep as sweep_mod
from interventions.core.hooks import attach, last_token_logits
from interventions.core.sites import model_dims
from interventions.edits import SteerVec
from interventions.evaluation.sweep import (
    SweepCache,
    SweepExample,
    answer_activations,
    cached_sweep,
    run_sweep,
    sweep_example,
    sweep_example_naive,
)
from interventions.methods.caa.vectors import caa_vectors, steering_edit
from interventions.methods.w2s.l2s import L2SNets, fit_l2s, train_l2s, train_nets

MULTS = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]


def _examples(n: int, seed: int = 0, lengths=(5, 9)) -> list[SweepExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        ids = torch.randint(3, 96, (length,), generator=g)
        pos, neg = torch.randperm(90, generator=g)[:2] + 3
        out.append(SweepExample(ids, int(pos), int(neg)))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_prefix_sweep_equals_naive_rerun(arch):
    model = tiny_model(arch)
    dims = model_dims(model)
    torch.manual_seed(1)
    vectors = torch.randn(dims.num_layers, dims.d_model)
    for ex in _examples(2, seed=3):
        fast = sweep_example(model, ex, vectors, MULTS)
        rows = sweep_example(model, ex, vectors, MULTS, packed=False)
        naive = sweep_example_naive(model, ex, vectors, MULTS)
        assert fast.shape == (dims.num_layers, len(MULTS))
        torch.testing.assert_close(fast, naive, atol=1e-4, rtol=0)
        torch.testing.assert_close(rows, naive, atol=1e-4, rtol=0)
        # steering changes the propensity, and multiplier 0 is the same at every layer
        assert (fast[:, 0] - fast[:, -1]).abs().max() > 1e-3
        assert torch.equal(fast[:, 3], fast[0, 3].expand(dims.num_layers))


def test_naive_equals_hand_steered_forward():
    """The naive reference itself against a direct edit of one layer's output."""
    model = tiny_model("llama")
    dims = model_dims(model)
    torch.manual_seed(0)
    vectors = torch.randn(dims.num_layers, dims.d_model)
    ex = _examples(1)[0]
    naive = sweep_example_naive(model, ex, vectors[1:2], [1.0], layers=[1])
    layer = model.model.layers[1]

    def add(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, -1] += vectors[1]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = layer.register_forward_hook(add)
    try:
        logits = model(input_ids=ex.prompt_ids[None]).logits[0, -1]
    finally:
        handle.remove()
    logp = torch.log_softmax(logits, -1)
    expected = logp[ex.positive_id] - logp[ex.negative_id]
    torch.testing.assert_close(naive[0, 0], expected, atol=1e-5, rtol=0)


def test_per_row_layer_beta_equals_separate_passes():
    """A [batch, layers] beta steers each row at its own layer, as separate float-beta passes do."""
    model = tiny_model("qwen2")
    dims = model_dims(model)
    torch.manual_seed(0)
    edit = SteerVec(dims, ["resid_post"], positions="last")
    with torch.no_grad():
        edit.params["resid_post"].normal_()
    ids, mask, _ = random_batch(3, [6, 6, 6], "left")
    beta = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [0.5, 0.0, 0.0]])
    with attach(model, edit, beta):
        joint = last_token_logits(model, ids, mask)
    for row, (layer, b) in enumerate([(1, 2.0), (2, -1.0), (0, 0.5)]):
        one = SteerVec(dims, ["resid_post"], layers=[layer], positions="last")
        with torch.no_grad():
            one.params["resid_post"].copy_(edit.params["resid_post"][layer : layer + 1])
        with attach(model, one, b):
            alone = last_token_logits(model, ids[row : row + 1], mask[row : row + 1])
        torch.testing.assert_close(joint[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one column per layer"):
        with attach(model, edit, torch.zeros(3, 2)):
            last_token_logits(model, ids, mask)


def test_steerability_of_the_sweep_is_the_polyfit_slope():
    import numpy as np

    model = tiny_model("gpt2")
    dims = model_dims(model)
    vectors = torch.randn(dims.num_layers, dims.d_model)
    res = run_sweep(model, _examples(3), vectors, MULTS, progress=False)
    slopes = res.steerability
    for i in range(3):
        for layer in range(dims.num_layers):
            expected = np.polyfit(MULTS, res.propensity[i, layer].double().numpy(), 1)[0]
            assert abs(float(slopes[i, layer]) - expected) < 1e-5


def test_answer_activations_and_caa_equal_hand_mean_difference():
    model = tiny_model("llama")
    dims = model_dims(model)
    ids, mask, rows = random_batch(4, [5, 7, 6, 4], "left", seed=2)
    pos = torch.tensor([10, 11, 12, 13])
    neg = torch.tensor([20, 21, 22, 23])
    batch = dict(input_ids=ids, attention_mask=mask, correct_id=pos, wrong_id=neg)
    diff, ctx = answer_activations(model, ids, mask, pos, neg, range(3), context_layers=[0, 2])
    # by hand: each example alone, unpadded, hidden_states[l + 1] is resid_post of layer l
    hand = []
    hand_ctx = []
    for b, row in enumerate(rows):
        hp = model(input_ids=torch.cat([row, pos[b : b + 1]])[None], output_hidden_states=True)
        hn = model(input_ids=torch.cat([row, neg[b : b + 1]])[None], output_hidden_states=True)
        hand.append(
            torch.stack(
                [
                    hp.hidden_states[ly + 1][0, -1] - hn.hidden_states[ly + 1][0, -1]
                    for ly in range(3)
                ]
            )
        )
        hand_ctx.append(torch.stack([hp.hidden_states[ly + 1][0, -2] for ly in (0, 2)]))
    # the last layer's hidden state is after the final norm in HF; compare the first two exactly
    torch.testing.assert_close(diff[:, :2], torch.stack(hand)[:, :2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ctx[:, 0], torch.stack(hand_ctx)[:, 0], atol=1e-5, rtol=1e-4)
    # CAA over two batches = the mean of the per-example differences
    half = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    vectors = caa_vectors(model, half)
    torch.testing.assert_close(vectors, diff.mean(0), atol=1e-5, rtol=1e-5)
    # right padding gives the same differences
    ids_r, mask_r, _ = random_batch(4, [5, 7, 6, 4], "right", seed=2)
    diff_r, _ = answer_activations(model, ids_r, mask_r, pos, neg, range(3))
    torch.testing.assert_close(diff_r, diff, atol=1e-5, rtol=1e-4)
    # the exported edit holds the vectors at every layer
    edit = steering_edit(model, vectors)
    assert edit.params["resid_post"].shape == (dims.num_layers, 1, dims.d_model)


def test_interrupted_sweep_resumes_without_recomputing(tmp_path, monkeypatch):
    model = tiny_model("llama")
    dims = model_dims(model)
    vectors = torch.randn(dims.num_layers, dims.d_model)
    examples = _examples(10)
    full = run_sweep(model, examples, vectors, MULTS, progress=False).propensity
    calls = []
    real = sweep_mod.sweep_example

    def failing(*args, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "sweep_example", failing)
    tags = {"behavior": "toy", "split": "train"}
    with pytest.raises(KeyboardInterrupt):
        cached_sweep(
            model,
            examples,
            vectors,
            MULTS,
            "tiny",
            tags,
            cache_dir=tmp_path,
            chunk_size=3,
            progress=False,
        )
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].glob("chunk_*")) == [
        "chunk_00000.safetensors",
        "chunk_00001.safetensors",
    ]  # 7 examples done = 2 full chunks written; the third was interrupted
    calls.clear()

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "sweep_example", counting)
    res = cached_sweep(
        model,
        examples,
        vectors,
        MULTS,
        "tiny",
        tags,
        cache_dir=tmp_path,
        chunk_size=3,
        progress=False,
    )
    assert len(calls) == 4  # only the examples of the two unfinished chunks
    torch.testing.assert_close(res.propensity, full, atol=1e-6, rtol=0)
    calls.clear()
    again = cached_sweep(
        model,
        examples,
        vectors,
        MULTS,
        "tiny",
        tags,
        cache_dir=tmp_path,
        chunk_size=3,
        progress=False,
    )
    assert len(calls) == 0
    assert torch.equal(again.propensity, res.propensity)


def test_cache_of_another_config_is_recomputed(tmp_path, monkeypatch):
    model = tiny_model("gpt2")
    dims = model_dims(model)
    vectors = torch.randn(dims.num_layers, dims.d_model)
    examples = _examples(4)
    tags = {"behavior": "toy"}
    first = cached_sweep(
        model, examples, vectors, MULTS, "tiny", tags, cache_dir=tmp_path, progress=False
    )
    # other vectors, other multipliers or other examples -> another key, never the old result
    other = cached_sweep(
        model, examples, 2 * vectors, MULTS, "tiny", tags, cache_dir=tmp_path, progress=False
    )
    assert not torch.allclose(other.propensity, first.propensity)
    assert len(list(tmp_path.iterdir())) == 2
    # a folder whose meta.json holds another configuration (collision / hand-made) is recomputed
    folder = next(iter(tmp_path.iterdir()))
    meta = json.loads((folder / "meta.json").read_text())
    cfg = dict(meta["config"], multipliers=[-1.0, 1.0])
    cache = SweepCache(folder, cfg, len(examples))
    calls = []
    real = sweep_mod.sweep_example
    monkeypatch.setattr(
        sweep_mod, "sweep_example", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with pytest.warns(UserWarning, match="another configuration"):
        res = run_sweep(model, examples, vectors, [-1.0, 1.0], cache, progress=False)
    assert len(calls) == 4 and res.propensity.shape == (4, dims.num_layers, 2)
    assert json.loads((folder / "meta.json").read_text())["config"]["multipliers"] == [-1.0, 1.0]


def test_sweep_subset_of_layers_and_bad_input():
    model = tiny_model("llama")
    dims = model_dims(model)
    vectors = torch.randn(dims.num_layers, dims.d_model)
    examples = _examples(2)
    full = run_sweep(model, examples, vectors, MULTS, progress=False)
    part = run_sweep(model, examples, vectors, MULTS, progress=False, layers=[2, 0])
    assert part.swept_layers == [0, 2]
    assert part.propensity[:, 1].isnan().all()
    torch.testing.assert_close(part.propensity[:, [0, 2]], full.propensity[:, [0, 2]])
    with pytest.raises(ValueError, match="two distinct multipliers"):
        run_sweep(model, examples, vectors, [1.0, 1.0], progress=False)
    with pytest.raises(ValueError, match="vectors must be"):
        run_sweep(model, examples, vectors[:2], MULTS, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        run_sweep(model, examples, vectors, MULTS, progress=False, layers=[5])


def test_l2s_learns_a_linear_map_and_picks_the_informative_context_layer():
    g = torch.Generator().manual_seed(0)
    n, d = 200, 8
    informative = torch.randn(n, d, generator=g)
    noise = torch.randn(n, d, generator=g)
    w = torch.randn(d, d, generator=g) * 0.3
    oracle = torch.stack([informative @ w, 2 * informative @ w], 1)  # [N, L=2, d]
    context = torch.stack([noise, informative], 1)  # candidate context layers 0 (noise), 3
    tr, va = slice(0, 150), slice(150, 200)
    l2s = train_l2s(
        context[tr], oracle[tr], context[va], oracle[va], [0, 3], fixed_layer=1, steps=400
    )
    assert l2s.context_layer == 3
    assert l2s.context_mse[3] < 0.5 * l2s.context_mse[0]
    pred = l2s.predict(context[va, 1])
    assert pred.shape == (50, 2, d)
    base = float(((oracle[va] - oracle[tr].mean(0)) ** 2).mean())
    assert float(((pred - oracle[va]) ** 2).mean()) < 0.2 * base
    with pytest.raises(ValueError, match="at least one training example"):
        fit_l2s(torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, d))


def test_batched_l2s_networks_train_as_if_alone():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=g), torch.randn(20, 3, 5, generator=g)
    torch.manual_seed(0)
    joint = L2SNets(3, 6, 5, hidden=7)
    alone = joint.select(torch.tensor([1]))
    train_nets(joint, x, y, lr=1e-2, steps=50)
    train_nets(alone, x, y[:, 1:2], lr=1e-2, steps=50)
    torch.testing.assert_close(joint(x)[:, 1], alone(x)[:, 0], atol=1e-5, rtol=1e-5)
