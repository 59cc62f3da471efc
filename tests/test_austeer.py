"""AUSteer: activation momentum, AU selection, steering values and the AUScale / AUShift edits."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_model

from datamodules.commonsense import _pad
from interventions.core.hooks import attach, position_ids, record
from interventions.core.sites import SITES, model_dims
from interventions.edits import EDITS, AUScale, AUShift
from interventions.edits.artifact import load_intervention, save_intervention
from interventions.methods.austeer.units import (
    STAT_SITES,
    ZERO_TOL,
    MomentumStats,
    activation_difference_units,
    au_activations,
    austeer_gammas,
    build_edit,
    fixed_strength_gammas,
    fixed_vector,
    random_units,
    top_k_units,
)

# ----------------------------------------------------------------------------- hand-made example
# 4 pairs x 1 layer x 3 dims, one site.  Momentum m = pos - neg per pair:
#   pair 1: [ 1, -1,  0]
#   pair 2: [ 1,  1,  1]
#   pair 3: [ 2, -1, -1]
#   pair 4: [-1,  2, -1]
# dim 0: m > 0 in 3 pairs, m < 0 in 1  -> r+ = 0.75, r- = 0.25, s = 0.75; r+ > r- so
#        gamma = alpha * r+ = 2 * 0.75 = 1.5
# dim 1: m > 0 in 2, m < 0 in 2        -> r+ = 0.50, r- = 0.50, s = 0.50; a tie takes Eq. 3's
#        "otherwise" branch: gamma = -alpha * r- = -1.0
# dim 2: m > 0 in 1, m < 0 in 2, m = 0 in 1 (counted in neither)
#                                      -> r+ = 0.25, r- = 0.50, s = 0.50; gamma = -2 * 0.5 = -1.0
# mean m = [3/4, 1/4, -1/4].
POS = torch.tensor([[1.0, 0, 5], [2, 1, 5], [3, 0, 5], [0, 2, 5]])[:, None, :]  # [4, 1, 3]
NEG = torch.tensor([[0.0, 1, 5], [1, 0, 4], [1, 1, 6], [1, 0, 6]])[:, None, :]  # [4, 1, 3]


def _hand_stats() -> MomentumStats:
    stats = MomentumStats(track_abs=True, zero_tol=0.0)
    stats.update({"mlp_act": POS}, {"mlp_act": NEG})
    return stats


def test_momentum_scores_and_gammas_by_hand():
    stats = _hand_stats()
    assert stats.n == 4
    assert stats.count_pos["mlp_act"].tolist() == [[3, 2, 1]]
    assert stats.count_neg["mlp_act"].tolist() == [[1, 2, 2]]
    assert stats.r_pos["mlp_act"].tolist() == [[0.75, 0.5, 0.25]]
    assert stats.r_neg["mlp_act"].tolist() == [[0.25, 0.5, 0.5]]
    assert stats.scores["mlp_act"].tolist() == [[0.75, 0.5, 0.5]]
    assert stats.mean_diff["mlp_act"].tolist() == [[0.75, 0.25, -0.25]]
    assert stats.mean_abs_diff["mlp_act"].tolist() == [[1.25, 1.25, 0.75]]
    units = top_k_units(stats.scores, k=3)
    assert units == [(0, "mlp_act", 0), (0, "mlp_act", 1), (0, "mlp_act", 2)]
    assert austeer_gammas(stats, units, alpha=2.0)["mlp_act"].tolist() == [[1.5, -1.0, -1.0]]
    # only the selected units get a gamma
    assert austeer_gammas(stats, units[:1], alpha=2.0)["mlp_act"].tolist() == [[1.5, 0.0, 0.0]]
    # fixed strength: alpha * mean(s of the selected) = 2 * (0.75 + 0.5 + 0.5) / 3, AUSteer's signs
    fixed = fixed_strength_gammas(stats, units, alpha=2.0)["mlp_act"]
    magnitude = 2 * 1.75 / 3
    torch.testing.assert_close(fixed, torch.tensor([[magnitude, -magnitude, -magnitude]]))
    # fixed vector: alpha * mean m on the selected dims
    vec = fixed_vector(stats, [(0, "mlp_act", 0), (0, "mlp_act", 2)], alpha=2.0)["mlp_act"]
    assert vec.tolist() == [[1.5, 0.0, -0.5]]
    # SADI-style localisation: |mean m| = [0.75, 0.25, 0.25]
    assert activation_difference_units(stats, k=2) == [(0, "mlp_act", 0), (0, "mlp_act", 1)]


def test_zero_tol_counts_differences_at_noise_level_as_zero():
    """|m| <= zero_tol * scale counts as zero, scale = the pair's mean |x| over the layer's units
    (both texts), so a unit near zero in both texts gets the layer's threshold, not its own."""
    assert ZERO_TOL == 1e-3 and MomentumStats().zero_tol == ZERO_TOL
    # one pair, 1 layer x 4 units; mean |x_pos| = 2.5, mean |x_neg| = 2.5 -> scale 2.5
    pos = torch.tensor([[[4.0, 6.0, 1e-6, -0.1]]])  # [1, 1, 4]
    neg = torch.tensor([[[4.0 + 1e-4, 5.0, 3e-6, 0.0]]])
    neg[0, 0, 3] = -0.1 - 2e-3  # |m| = 2e-3 <= 0.01 * 2.5 but > 1e-4 * 2.5
    neg[0, 0, 1] = 6.0 - 2.5e-3  # scale stays ~2.5 (mean |x| of each text)
    for tol, positive, negative in (
        (0.0, [0, 1, 0, 1], [1, 0, 1, 0]),  # exact signs: every tiny difference counts
        (1e-4, [0, 1, 0, 1], [0, 0, 0, 0]),  # 1e-4 and 2e-6 are below 2.5e-4
        (1e-2, [0, 0, 0, 0], [0, 0, 0, 0]),  # everything is below 2.5e-2
    ):
        stats = MomentumStats(zero_tol=tol)
        stats.update({"attn_z": pos}, {"attn_z": neg})
        assert stats.count_pos["attn_z"][0].tolist() == positive, tol
        assert stats.count_neg["attn_z"][0].tolist() == negative, tol
        # the mean difference (activation-difference localisation, fixed vector) keeps it all
        torch.testing.assert_close(stats.mean_diff["attn_z"], (pos - neg)[0].float())
    restored = MomentumStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.zero_tol == 1e-2 and stats.select(["attn_z"]).zero_tol == 1e-2
    old = stats.state_dict()
    del old["zero_tol"]  # saved before the tolerance existed: exact signs
    restored.load_state_dict(old)
    assert restored.zero_tol == 0.0
    with pytest.raises(ValueError, match="zero_tol must be >= 0"):
        MomentumStats(zero_tol=-1e-3)


def noise_pairs() -> list[tuple[list[int], list[int]]]:
    """24 (positive, negative) token lists; every second pair is one text twice, so its momentum
    is exactly 0 one text at a time and float noise in padded batches (the other pairs'
    negatives are longer, so the two copies are padded differently)."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for j in range(24):
        pos = torch.randint(3, 96, (int(torch.randint(4, 20, (1,), generator=g)),), generator=g)
        neg = torch.randint(3, 96, (int(torch.randint(20, 30, (1,), generator=g)),), generator=g)
        pairs.append((pos.tolist(), pos.tolist() if j % 2 else neg.tolist()))
    return pairs


def batched_and_single_statistics(
    model, pairs, zero_tol: float
) -> tuple[MomentumStats, MomentumStats]:
    """Momentum statistics of ``pairs`` from left-padded batches of 8 and one text at a time,
    on the device of ``model``."""
    device = next(model.parameters()).device
    sites = list(STAT_SITES)
    batched, single = MomentumStats(zero_tol=zero_tol), MomentumStats(zero_tol=zero_tol)
    for lo in range(0, len(pairs), 8):
        chunk = pairs[lo : lo + 8]
        batched.update(
            *(
                au_activations(
                    model, *(t.to(device) for t in _pad([p[k] for p in chunk], 0, "left")), sites
                )
                for k in (0, 1)
            )
        )
    for pair in pairs:
        single.update(
            *(
                au_activations(
                    model,
                    torch.tensor([t], device=device),
                    torch.ones(1, len(t), dtype=torch.long, device=device),
                    sites,
                )
                for t in pair
            )
        )
    return batched, single


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_batched_statistics_equal_one_at_a_time(arch):
    """Left-padded batches and one text at a time give the same counts, scores and top-k, where
    the exact comparison (``zero_tol=0``) counts the signs of float noise (see ``noise_pairs``)."""
    model = tiny_model(arch)
    pairs = noise_pairs()
    sites = list(STAT_SITES)
    batched, single = batched_and_single_statistics(model, pairs, ZERO_TOL)
    for site in sites:
        assert torch.equal(batched.count_pos[site], single.count_pos[site]), site
        assert torch.equal(batched.count_neg[site], single.count_neg[site]), site
        one = {site: batched.scores[site]}
        assert top_k_units(one, 20) == top_k_units({site: single.scores[site]}, 20)
    assert top_k_units(batched.scores, 50) == top_k_units(single.scores, 50)
    exact_batched, exact_single = batched_and_single_statistics(model, pairs, 0.0)
    assert any(
        not torch.equal(getattr(exact_batched, name)[site], getattr(exact_single, name)[site])
        for site in sites
        for name in ("count_pos", "count_neg")
    )


def test_running_statistics_equal_one_shot():
    g = torch.Generator().manual_seed(0)
    # small integers, so that many momenta are exactly 0 and every sum is exact
    widths = {"mlp_act": 4, "attn_z": 5}
    pos = {s: torch.randint(-2, 3, (10, 3, w), generator=g).float() for s, w in widths.items()}
    neg = {s: torch.randint(-2, 3, (10, 3, w), generator=g).float() for s, w in widths.items()}
    one_shot = MomentumStats(track_abs=True, zero_tol=0.0)
    one_shot.update(pos, neg)
    running = MomentumStats(track_abs=True, zero_tol=0.0)
    for lo, hi in [(0, 5), (5, 6), (6, 6), (6, 10)]:  # uneven batches, one of them empty
        running.update({s: t[lo:hi] for s, t in pos.items()}, {s: t[lo:hi] for s, t in neg.items()})
    assert running.n == one_shot.n == 10
    for name in ("count_pos", "count_neg", "sum_diff", "sum_abs_diff"):
        for site in pos:
            assert torch.equal(getattr(running, name)[site], getattr(one_shot, name)[site])
    for site in pos:
        m = pos[site] - neg[site]  # [10, 3, W]
        assert torch.equal(one_shot.count_pos[site], (m > 0).sum(0))
        assert torch.equal(one_shot.count_neg[site], (m < 0).sum(0))
        assert torch.equal(
            running.scores[site], torch.maximum((m > 0).float().mean(0), (m < 0).float().mean(0))
        )
    restored = MomentumStats()
    restored.load_state_dict(running.state_dict())
    assert top_k_units(restored.scores, 7) == top_k_units(one_shot.scores, 7)


def test_top_k_ties_are_broken_by_layer_site_dim():
    scores = {
        "mlp_act": torch.tensor([[0.5, 0.9], [0.9, 0.1]]),  # [L=2, W=2]
        "attn_z": torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.9, 0.9]]),  # [L=2, W=3]
    }
    assert top_k_units(scores, 7) == [
        (0, "mlp_act", 1),  # every 0.9: lower layer first, then site order, then lower dim
        (0, "attn_z", 0),
        (1, "mlp_act", 0),
        (1, "attn_z", 1),
        (1, "attn_z", 2),
        (0, "mlp_act", 0),  # the 0.5s
        (0, "attn_z", 1),
    ]
    reordered = {"attn_z": scores["attn_z"], "mlp_act": scores["mlp_act"]}
    assert top_k_units(reordered, 2) == [(0, "attn_z", 0), (0, "mlp_act", 1)]
    assert top_k_units(scores, 3, layers=[1]) == [
        (1, "mlp_act", 0),
        (1, "attn_z", 1),
        (1, "attn_z", 2),
    ]
    assert len(top_k_units(scores, 10)) == 10  # every unit
    draw = random_units({"mlp_act": (2, 2), "attn_z": (2, 3)}, 4, seed=3)
    assert draw == random_units({"mlp_act": (2, 2), "attn_z": (2, 3)}, 4, seed=3)
    assert len(set(draw)) == 4 and draw == sorted(
        draw, key=lambda u: (u[0], u[1] != "mlp_act", u[2])
    )
    assert all(u[0] == 0 for u in random_units({"mlp_act": (2, 2)}, 2, layers=[0]))


def test_selection_errors():
    stats = _hand_stats()
    with pytest.raises(ValueError, match="k=4 but there are only 3 units"):
        top_k_units(stats.scores, 4)
    with pytest.raises(ValueError, match="k must be a positive"):
        top_k_units(stats.scores, 0)
    with pytest.raises(ValueError, match="only 5 units"):
        random_units({"mlp_act": (1, 5)}, 6)
    with pytest.raises(ValueError, match="out of range"):
        top_k_units(stats.scores, 1, layers=[1])
    empty = MomentumStats()
    with pytest.raises(ValueError, match="the contrastive pool is empty"):
        _ = empty.scores
    with pytest.raises(ValueError, match="the contrastive pool is empty"):
        austeer_gammas(empty, [(0, "mlp_act", 0)], alpha=1.0)
    with pytest.raises(ValueError, match="equal \\[batch, L, width\\] shapes"):
        empty.update({"mlp_act": POS}, {"mlp_act": NEG[:3]})
    with pytest.raises(ValueError, match="same sites"):
        empty.update({"mlp_act": POS}, {"attn_z": NEG})
    with pytest.raises(ValueError, match="earlier batches had"):
        stats.update({"attn_z": POS}, {"attn_z": NEG})
    with pytest.raises(ValueError, match="earlier batches were"):
        stats.update({"mlp_act": POS[..., :2]}, {"mlp_act": NEG[..., :2]})
    with pytest.raises(ValueError, match="NaN"):
        stats.update({"mlp_act": POS * float("nan")}, {"mlp_act": NEG})
    with pytest.raises(ValueError, match="outside the statistics"):
        austeer_gammas(stats, [(0, "mlp_act", 3)], alpha=1.0)
    with pytest.raises(ValueError, match="track_abs"):
        _ = MomentumStats().mean_abs_diff
    assert stats.n == 4  # failed updates added nothing


# ----------------------------------------------------------------------------- the edits
def _values(dims, site: str, layer: int, picks: dict[int, float]) -> dict[str, torch.Tensor]:
    values = torch.zeros(dims.num_layers, dims.width(site))  # [L, W]
    for dim, value in picks.items():
        values[layer, dim] = value
    return {site: values}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3", "gemma2"])
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("kind", ["auscale", "aushift"])
def test_steering_changes_only_the_selected_dims(arch, site, kind):
    model = tiny_model(arch)
    dims = model_dims(model)
    layer, picks = 1, {3: 0.5, 7: -0.75, 20: 2.0}
    edit = build_edit(dims, _values(dims, site, layer, picks), kind=kind, positions="all")
    assert isinstance(edit, AUScale if kind == "auscale" else AUShift)
    assert edit.num_steered() == 3
    assert edit.selected() == [(layer, site, d, v) for d, v in picks.items()]
    ids, mask, _ = random_batch(2, [7, 5], "left", seed=2)
    beta = torch.tensor([1.0, -0.5])
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    with record(model, [(layer, site)]) as acts:
        model(**kwargs)
        clean = acts[(layer, site)].clone()  # [2, 7, W]
        # record reads before the edits attached inside its block (hooks are prepended), so it
        # is opened outside attach to see the edited activation
        with attach(model, edit, beta=beta):
            model(**kwargs)
        steered = acts[(layer, site)]
    idx = torch.tensor(list(picks))
    others = torch.ones(dims.width(site), dtype=torch.bool)
    others[idx] = False
    assert torch.equal(steered[..., others], clean[..., others])
    value = torch.tensor(list(picks.values()))  # [3]
    coef = (beta[:, None] * mask)[..., None]  # [2, 7, 1]: beta on real tokens, 0 on padding
    x = clean[..., idx]  # [2, 7, 3]
    expected = x * (1 + coef * value) if kind == "auscale" else x + coef * value
    torch.testing.assert_close(steered[..., idx], expected, atol=0, rtol=1e-6)
    assert torch.equal(steered[1, :2], clean[1, :2])  # padding untouched
    assert not torch.equal(steered[..., idx], x)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["auscale", "aushift"])
def test_last_position_leaves_earlier_tokens_identical(arch, kind):
    model = tiny_model(arch)
    dims = model_dims(model)
    site, layer = "mlp_act", 0
    edit = build_edit(dims, _values(dims, site, layer, {1: 3.0, 5: -2.0}), kind, "last")
    ids, mask, _ = random_batch(2, [6, 4], "right", seed=4)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    with record(model, [(layer, site)]) as acts:
        clean_logits = model(**kwargs).logits
        clean = acts[(layer, site)].clone()
        with attach(model, edit):
            logits = model(**kwargs).logits
        steered = acts[(layer, site)]
    for row, last in enumerate([5, 3]):
        assert torch.equal(steered[row, :last], clean[row, :last])
        assert torch.equal(logits[row, :last], clean_logits[row, :last])
        assert not torch.equal(steered[row, last], clean[row, last])
        assert torch.equal(steered[row, last, 2:5], clean[row, last, 2:5])


@pytest.mark.parametrize("positions", ["all", "last"])
def test_generate_with_cache_equals_loop_without_cache(positions):
    model = tiny_model("llama")
    dims = model_dims(model)
    edit = build_edit(dims, _values(dims, "attn_z", 1, {0: 4.0, 9: -3.0}), "auscale", positions)
    ids, mask, _ = random_batch(2, [5, 3], "left", seed=1)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    gen.update(output_logits=True, return_dict_in_generate=True)
    with attach(model, edit):
        out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    seq, seq_mask = ids, mask
    with attach(model, edit):
        for step in range(4):
            logits = model(
                input_ids=seq,
                attention_mask=seq_mask,
                position_ids=position_ids(seq_mask),
                use_cache=False,
            ).logits[:, -1]
            torch.testing.assert_close(out.logits[step], logits, atol=1e-5, rtol=1e-5)
            nxt = logits.argmax(-1, keepdim=True)
            seq, seq_mask = torch.cat([seq, nxt], 1), torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out.sequences, seq)
    plain = model.generate(input_ids=ids, attention_mask=mask, **gen)
    assert not torch.allclose(plain.logits[-1], out.logits[-1], atol=1e-4)  # generated steps too


@pytest.mark.parametrize("kind", ["auscale", "aushift"])
def test_export_and_load_give_identical_logits(tmp_path, kind):
    model = tiny_model("gemma2")
    dims = model_dims(model)
    values = {
        **_values(dims, "mlp_act", 2, {4: 1.5, 40: -0.5}),
        **_values(dims, "attn_z", 0, {11: 2.0}),
    }
    edit = build_edit(dims, values, kind=kind, positions="last")
    folder = save_intervention(edit, tmp_path / "au", backbone="tiny-gemma2")
    loaded = load_intervention(folder)
    assert type(loaded) is type(edit) and loaded.kind == kind and EDITS[kind] is type(edit)
    assert loaded.positions == "last" and loaded.selected() == edit.selected()
    ids, mask, _ = random_batch(3, [6, 4, 5], "left", seed=5)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    with attach(model, edit, beta=2.0):
        expected = model(**kwargs).logits
    with attach(model, loaded, beta=2.0):
        assert torch.equal(model(**kwargs).logits, expected)
    assert not torch.allclose(model(**kwargs).logits, expected)


def test_zero_values_and_zero_beta_are_exact():
    model = tiny_model("llama")
    dims = model_dims(model)
    ids, mask, _ = random_batch(2, [6, 6], "right")
    clean = model(input_ids=ids, attention_mask=mask).logits
    nothing = AUScale(dims, sites=["mlp_act", "attn_z"])  # init_std=0: nothing steered
    assert nothing.num_steered() == 0 and nothing.selected() == []
    with attach(model, nothing):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, clean)
    edit = build_edit(dims, _values(dims, "mlp_act", 1, {2: 5.0}))
    with attach(model, edit, beta=0.0):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, clean)
    with torch.no_grad():  # the steered dims follow the parameters at every call
        edit.params["mlp_act"].zero_()
    with attach(model, edit):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, clean)


def test_edit_argument_errors():
    dims = model_dims(tiny_model("llama"))
    with pytest.raises(ValueError, match="'all' real tokens or the 'last'"):
        AUScale(dims, sites=["mlp_act"], positions=[0, 1])
    with pytest.raises(ValueError, match="needs \\[3, 48\\]"):
        build_edit(dims, {"mlp_act": torch.zeros(3, 32)})
    with pytest.raises(ValueError, match="'auscale' or 'aushift'"):
        build_edit(dims, {"mlp_act": torch.zeros(3, 48)}, kind="steervec")


# ----------------------------------------------------------------------------- end to end
def test_au_activations_and_pipeline():
    model = tiny_model("qwen2")
    dims = model_dims(model)
    sites = ["mlp_act", "attn_z"]
    ids, mask, rows = random_batch(3, [5, 7, 4], "left", seed=6)
    acts = au_activations(model, ids, mask, sites)
    assert {s: a.shape for s, a in acts.items()} == {
        "mlp_act": (3, 3, 48),
        "attn_z": (3, 3, 32),
    }
    with record(model, [(2, "mlp_act")]) as rec:  # the last real token of row 1, unpadded
        model(input_ids=rows[1][None])
    torch.testing.assert_close(acts["mlp_act"][1, 2], rec[(2, "mlp_act")][0, -1])
    right_ids, right_mask, _ = random_batch(3, [5, 7, 4], "right", seed=6)
    right = au_activations(model, right_ids, right_mask, sites)
    for site in sites:
        torch.testing.assert_close(right[site], acts[site], atol=1e-5, rtol=1e-5)
    # the token read_offset real tokens before the last: the same as the text cut after it
    offset = torch.tensor([2, 0, 3])
    for side, (b_ids, b_mask) in (("left", (ids, mask)), ("right", (right_ids, right_mask))):
        early = au_activations(model, b_ids, b_mask, sites, read_offset=offset)
        for row, cut in enumerate(offset.tolist()):
            text = rows[row][: len(rows[row]) - cut][None]
            alone = au_activations(model, text, torch.ones_like(text), sites)
            for site in sites:
                torch.testing.assert_close(early[site][row], alone[site][0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(early["mlp_act"][0], acts["mlp_act"][0]), side
    with pytest.raises(ValueError, match="outside their"):
        au_activations(model, ids, mask, sites, read_offset=torch.tensor([0, 7, 0]))
    with pytest.raises(ValueError, match="one value per row"):
        au_activations(model, ids, mask, sites, read_offset=torch.tensor([0, 1]))
    partial = au_activations(model, ids, mask, ["mlp_act"], layers=[1])["mlp_act"]
    assert torch.equal(partial[:, 1], acts["mlp_act"][:, 1])
    assert not partial[:, [0, 2]].any()

    neg_ids, neg_mask, _ = random_batch(3, [6, 6, 3], "left", seed=7)
    stats = MomentumStats()
    stats.update(acts, au_activations(model, neg_ids, neg_mask, sites))
    units = top_k_units(stats.scores, k=5)
    assert all(stats.scores[s][layer, d] == 1.0 for layer, s, d in units)  # 3 of 3 pairs agree
    edit = build_edit(dims, austeer_gammas(stats, units, alpha=10.0))
    assert edit.num_steered() == 5
    assert {(layer, s, d) for layer, s, d, _ in edit.selected()} == set(units)
    clean = model(input_ids=ids, attention_mask=mask).logits
    with attach(model, edit):
        assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, clean)
