"""A2A (interventions.methods.a2a.module): layer scores, nDCG, top-k, the steering grid, cost, and the module.

Reference values are computed independently of ``interventions.methods.a2a.module``: Algorithm 1 of the paper
as a loop over edges, nDCG written out with linear gains and ``log2(rank + 1)`` discounts, and
steering as a forward hook on each unpadded prompt run in full (no cache, no padding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import random_batch, tiny_model

from interventions.edits.artifact import load_intervention
from interventions.methods.a2a import (
    A2A_METHODS,
    A2AModule,
    GridResult,
    activation_difference,
    cost_forward_equivalents,
    layer_relevance,
    layer_scores,
    method_costs,
    mid_layer_scores,
    ndcg,
    random_scores,
    rank_layers,
    steering_grid,
    top_k_choice,
    top_k_layers,
)
from interventions.methods.eap.graph import AttributionGraph
from interventions.reporting.run_folder import resolve_run

PAPER = Path(__file__).resolve().parents[2] / "shared" / "papers" / "a2a-layer-selection.txt"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine's other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Layer scores (Algorithm 1) on a hand-built graph
# --------------------------------------------------------------------------------------------


def hand_graph(num_examples: int = 3, seed: int = 0) -> AttributionGraph:
    """Two layers: layer 0 with block-level inputs (``a0`` shared by both heads), layer 1 with
    per-head q inputs and one key input shared by both heads (GQA); random signed scores, NaN on
    the pairs that are not edges."""
    nodes = ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "logits"]
    node_layers = [-1, 0, 0, 0, 1, 1, 1, 2]
    write = [0, 1, 1, 2, 3, 3, 4]  # stage at which each upstream node writes
    inputs = ["a0", "m0", "a1.h0<q>", "a1.h1<q>", "a1.kv0<k>", "m1", "logits"]
    input_nodes = [
        ["a0.h0", "a0.h1"],
        ["m0"],
        ["a1.h0"],
        ["a1.h1"],
        ["a1.h0", "a1.h1"],
        ["m1"],
        ["logits"],
    ]
    read = [1, 2, 3, 3, 3, 4, 5]
    g = torch.Generator().manual_seed(seed)
    example_scores = torch.randn(num_examples, len(write), len(read), generator=g).double()
    for u, w in enumerate(write):
        for c, r in enumerate(read):
            if not w < r:
                example_scores[:, u, c] = float("nan")
    return AttributionGraph(
        nodes=nodes,
        node_layers=node_layers,
        inputs=inputs,
        input_nodes=input_nodes,
        scores=example_scores.mean(0),
        example_scores=example_scores,
        metric_clean=torch.zeros(num_examples),
        metric_corrupted=torch.zeros(num_examples),
        steps=5,
        architecture="hand",
        per_head_inputs=True,
    )


def algorithm_1(graph: AttributionGraph, eps: float) -> dict[str, list[float]]:
    """Algorithm 1 as loops: accumulate |Attr| per example, node In/Out, layer sums (divided by
    the number of examples, as layer_scores reports the per-example mean)."""
    n, rows, cols = graph.example_scores.shape
    acc: dict[tuple[int, int], float] = {}
    for b in range(n):
        for u in range(rows):
            for c in range(cols):
                s = float(graph.example_scores[b, u, c])
                if math.isnan(s):
                    continue
                acc[u, c] = acc.get((u, c), 0.0) + abs(s)
    node_in = dict.fromkeys(graph.nodes, 0.0)
    node_out = dict.fromkeys(graph.nodes, 0.0)
    for (u, c), w in acc.items():
        node_out[graph.nodes[u]] += w
        readers = graph.input_nodes[c]
        for v in readers:
            node_in[v] += w / len(readers)
    num_layers = max(graph.node_layers)
    lin, lout = [0.0] * num_layers, [0.0] * num_layers
    for name, layer in zip(graph.nodes, graph.node_layers):
        if 0 <= layer < num_layers:
            lin[layer] += node_in[name] / n
            lout[layer] += node_out[name] / n
    return {
        "in": lin,
        "out": lout,
        "total": [a + b for a, b in zip(lin, lout)],
        "ratio": [b / (a + eps) for a, b in zip(lin, lout)],
    }


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_layer_scores_follow_algorithm_1(eps):
    graph = hand_graph()
    got = layer_scores(graph, eps=eps)
    want = algorithm_1(graph, eps)
    assert set(got) == set(A2A_METHODS)
    for name in A2A_METHODS:
        assert got[name].dtype == torch.float64
        assert got[name].tolist() == pytest.approx(want[name], rel=1e-12), name
    # |Attr| is taken per example, before averaging: the |batch mean| of these signed scores
    # (a one-example graph of the mean) is smaller wherever signs cancel
    mean_only = AttributionGraph(
        **{**graph.__dict__, "example_scores": graph.scores[None], "metric_clean": torch.zeros(1)}
    )
    of_mean = layer_scores(mean_only, eps=eps)
    assert of_mean["in"].tolist() == pytest.approx(algorithm_1(mean_only, eps)["in"], rel=1e-12)
    assert bool((of_mean["in"] < got["in"]).all() and (of_mean["out"] < got["out"]).all())
    assert got["in"][0] > 0 and got["out"][1] > 0


def test_layer_scores_exclude_input_and_logits_and_split_shared_inputs():
    """One example, one edge at a time: where its |score| lands."""
    base = hand_graph(num_examples=1)
    edge = ~torch.isnan(base.example_scores[0])
    cases = {
        # (upstream node, input): expected (In, Out) per layer
        ("input", "a0"): ([2.0, 0.0], [0.0, 0.0]),  # the input's Out is in no layer
        ("a0.h1", "logits"): ([0.0, 0.0], [2.0, 0.0]),  # the logits' In is in no layer
        ("m0", "a1.kv0<k>"): ([0.0, 2.0], [2.0, 0.0]),  # shared by both heads: 1 + 1
        ("a0.h0", "a1.h1<q>"): ([0.0, 2.0], [2.0, 0.0]),
        ("input", "logits"): ([0.0, 0.0], [0.0, 0.0]),
    }
    for (u, c), (want_in, want_out) in cases.items():
        scores = torch.where(edge, torch.zeros(()), base.example_scores[0]).clone()
        scores[base.nodes.index(u), base.inputs.index(c)] = -2.0
        g = AttributionGraph(**{**base.__dict__, "example_scores": scores[None], "scores": scores})
        got = layer_scores(g)
        assert got["in"].tolist() == want_in, (u, c)
        assert got["out"].tolist() == want_out, (u, c)
    # nodes of a shared input split its |score| equally
    scores = torch.where(edge, torch.zeros(()), base.example_scores[0]).clone()
    scores[base.nodes.index("m0"), base.inputs.index("a1.kv0<k>")] = 3.0
    g = AttributionGraph(**{**base.__dict__, "example_scores": scores[None], "scores": scores})
    node_in = g.in_scores(per_example=True)
    assert float(node_in[g.nodes.index("a1.h0")]) == 1.5
    assert float(node_in[g.nodes.index("a1.h1")]) == 1.5


# --------------------------------------------------------------------------------------------
# nDCG, rankings, relevance, top-k
# --------------------------------------------------------------------------------------------


def test_ndcg_by_hand():
    relevance = torch.tensor([2, 0, 3, 1, 4])
    d = [1.0 / math.log2(rank + 1) for rank in range(1, 6)]  # discounts of ranks 1..5
    ideal = [4, 3, 2, 1, 0]
    idcg = {k: sum(g * w for g, w in zip(ideal[:k], d)) for k in (1, 3, 5)}
    # scores rank layers 1, 4, 3, 0, 2 -> gains 0, 4, 1, 2, 3
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7])
    assert rank_layers(scores) == [1, 4, 3, 0, 2]
    gains = [0, 4, 1, 2, 3]
    for k in (1, 3, 5):
        dcg = sum(g * w for g, w in zip(gains[:k], d))
        assert ndcg(scores, relevance, k) == pytest.approx(dcg / idcg[k], rel=1e-6), k
    assert ndcg(scores, relevance, 1) == 0.0
    assert ndcg(scores, relevance, 3) == pytest.approx(
        (4 / math.log2(3) + 1 / 2) / (4 + 3 / math.log2(3) + 2 / 2), rel=1e-6
    )
    # ranks 4, 2, 3, 0, 1 -> gains 4, 3, 1, 2, 0
    scores = torch.tensor([0.2, 0.1, 0.5, 0.3, 0.9], dtype=torch.float64)
    gains = [4, 3, 1, 2, 0]
    for k in (1, 3, 5):
        dcg = sum(g * w for g, w in zip(gains[:k], d))
        assert ndcg(scores, relevance, k) == pytest.approx(dcg / idcg[k], rel=1e-6), k
    assert ndcg(scores, relevance, 1) == 1.0
    # the ideal ranking scores 1 at every cutoff
    for k in (1, 3, 5):
        assert ndcg(relevance.double(), relevance, k) == pytest.approx(1.0)


def test_ndcg_edge_cases():
    scores = torch.tensor([0.3, 0.9, 0.1])
    assert ndcg(scores, torch.zeros(3, dtype=torch.long), 2) == 0.0
    with pytest.raises(ValueError, match=r"scores \[3\] and relevance \[4\] must both be"):
        ndcg(scores, torch.zeros(4, dtype=torch.long), 2)
    # scores that differ below float32 precision still rank in their float64 order (as
    # rank_layers does): the grid_val ranking breaks accuracy ties by 1e-6 * tanh(margin)
    close = torch.tensor([0.75 + 1e-8, 0.75 + 2e-8, 0.25], dtype=torch.float64)
    assert rank_layers(close) == [1, 0, 2]
    assert ndcg(close, torch.tensor([0, 2, 1]), 1) == 1.0
    assert ndcg(close, torch.tensor([2, 0, 1]), 1) == 0.0
    # exact ties share their gains (sklearn's convention): layers 0 and 1 split rank 1
    tied = torch.tensor([1.0, 1.0, 0.0])
    assert ndcg(tied, torch.tensor([0, 2, 1]), 1) == pytest.approx((0 + 2) / 2 / 2)


def test_top_k_layers_order_ties_and_errors():
    scores = torch.tensor([0.5, 2.0, 0.5, 3.0, 2.0])
    assert top_k_layers(scores, 1) == [3]
    assert top_k_layers(scores, 3) == [3, 1, 4]  # tie 1 / 4: the lower layer first
    assert top_k_layers(scores, 5) == [3, 1, 4, 0, 2]
    assert rank_layers(torch.zeros(4)) == [0, 1, 2, 3]
    for k in (6, 0, -1, True, 2.0):
        with pytest.raises(
            ValueError,
            match=r"top_k must be an integer between 1 and the number of layers \(5\), got",
        ):
            top_k_layers(scores, k)


def test_baseline_scores():
    # the paper's mid-layer baseline steers layers 18-20 of 32: centre 0.6 * 31 = 18.6
    assert top_k_layers(mid_layer_scores(32), 3) == [19, 18, 20]
    assert mid_layer_scores(5, center=0.5).tolist() == [-2.0, -1.0, 0.0, -1.0, -2.0]
    a, b = (random_scores(7, torch.Generator().manual_seed(s)) for s in (3, 3))
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(7))


def test_module_with_top_k_above_the_layer_count_fails_at_construction(tiny_backbone_dir):
    with pytest.raises(ValueError, match=r"number of layers \(3\), got 4; lower --model.top_k"):
        A2AModule(backbone=tiny_backbone_dir, top_k=4)


def grid(acc, margin, vanilla_accuracy=0.5, vanilla_margin=0.0, layers=None) -> GridResult:
    acc, margin = torch.tensor(acc, dtype=torch.float64), torch.tensor(margin, dtype=torch.float64)
    return GridResult(
        accuracy=acc,
        margin=margin,
        vanilla_accuracy=vanilla_accuracy,
        vanilla_margin=vanilla_margin,
        num_prompts=4,
        layers=list(range(acc.shape[0])) if layers is None else layers,
        multipliers=[1.0, 2.0][: acc.shape[1]],
    )


def test_layer_relevance_by_hand():
    acc = torch.tensor([[0.50, 0.75], [0.25, 0.25], [1.00, 0.60], [0.53, 0.20]])
    # best over multipliers 0.75, 0.25, 1.0, 0.53 -> points over 0.5: 25, 0 (clamped), 50, 3
    assert layer_relevance(acc, 0.5).tolist() == [25, 0, 50, 3]
    assert layer_relevance(acc, 0.5).dtype == torch.long
    assert layer_relevance(acc.max(1).values, 0.5).tolist() == [25, 0, 50, 3]
    margin = torch.tensor([0.123, -1.0, 0.5])
    assert layer_relevance(margin, 0.1).tolist() == [2, 0, 40]  # centi-logits gained
    assert layer_relevance(margin, 0.1, scale=10.0).tolist() == [0, 0, 4]


def test_top_k_choice_by_hand():
    g = grid(
        acc=[[0.50, 0.75], [0.75, 0.75], [0.75, 0.25], [0.25, 0.25]],
        margin=[[0.0, 1.0], [2.0, 0.5], [2.0, 9.0], [9.0, 9.0]],
    )
    assert top_k_choice(g, [0]) == (0, 1)
    # accuracy 0.75 at (0, 1), (1, 0), (1, 1), (2, 0): the margin decides -> (1, 0) or (2, 0)
    # with margin 2.0 each: the earlier candidate wins
    assert top_k_choice(g, [0, 1, 2, 3]) == (1, 0)
    assert top_k_choice(g, [2, 1, 0]) == (2, 0)
    assert top_k_choice(g, [3]) == (3, 0)  # equal accuracy and margin: the first multiplier
    assert top_k_choice(g, [3, 0]) == (0, 1)  # accuracy before margin
    with pytest.raises(ValueError, match="at least one candidate"):
        top_k_choice(g, [])
    with pytest.raises(ValueError, match=r"layer 7 was not in the grid"):
        top_k_choice(g, [7])
    # rows are grid layers, not indices
    sub = grid(acc=[[0.2], [0.9]], margin=[[0.0], [0.0]], layers=[5, 2])
    assert top_k_choice(sub, [5, 2]) == (2, 0)


# --------------------------------------------------------------------------------------------
# Cost (the paper's Section 4.1 example)
# --------------------------------------------------------------------------------------------


def test_cost_reproduces_the_papers_example():
    """Section 4.1, SafeEdit: 2.7k evaluation prompts, 32 layers, one multiplier: the grid costs 86,400
    forwards, A2A 19,500 forward-equivalents (15 |D_attr| + k |E|, m = 5): a 77.4% saving."""
    if PAPER.is_file():
        text = PAPER.read_text()
        for quote in ("2.7k test examples", "86,400", "19,500", "77.4%", "we set $k = 5$"):
            assert quote in text, quote
    num_eval, num_layers, steps = 2700, 32, 5
    # every k with an integer |D_attr| that gives 19,500: (19,500 - 2,700 k) / 15
    solutions = {
        k: (19_500 - k * num_eval) // (3 * steps)
        for k in range(1, num_layers + 1)
        if 19_500 - k * num_eval > 0 and (19_500 - k * num_eval) % (3 * steps) == 0
    }
    assert solutions == {1: 1120, 2: 940, 3: 760, 4: 580, 5: 400, 6: 220, 7: 40}
    # the paper's k = 5 ("in practice, we set k = 5") needs |D_attr| = 400, "a few hundred"
    cost = cost_forward_equivalents(400, steps, num_eval, num_layers, 1, k=5)
    assert cost["grid"] == 86_400.0
    assert cost["a2a"] == 19_500.0
    assert cost["saving"] == pytest.approx(1 - 19_500 / 86_400)
    assert round(100 * cost["saving"], 1) == 77.4
    for k, n in solutions.items():
        assert cost_forward_equivalents(n, steps, num_eval, num_layers, 1, k)["a2a"] == 19_500
    # M multipliers multiply both steering terms, not the attribution
    cost = cost_forward_equivalents(400, steps, num_eval, num_layers, 3, k=5)
    assert cost == {
        "grid": 32 * 3 * 2700.0,
        "a2a": 15 * 400 + 5 * 3 * 2700.0,
        "saving": pytest.approx(1 - (6000 + 40_500) / 259_200),
    }


# --------------------------------------------------------------------------------------------
# The steering grid and the activation difference vs full forward passes
# --------------------------------------------------------------------------------------------


def blocks(model):
    return model.transformer.h if model.config.model_type == "gpt2" else model.model.layers


def run_unpadded(model, row: torch.Tensor, layer: int | None = None, vec=None, out_layer=None):
    """One prompt without padding or cache: last-position logits, with ``vec`` added to the
    output of block ``layer`` at the last token; plus that block's output at ``out_layer``."""
    seen = {}

    def steer(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, -1] += vec
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def keep(module, args, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out)[0, -1].clone()

    handles = []
    if layer is not None:
        handles.append(blocks(model)[layer].register_forward_hook(steer))
    if out_layer is not None:
        handles.append(blocks(model)[out_layer].register_forward_hook(keep))
    try:
        out = model(input_ids=row[None], output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out.logits[0, -1], out.hidden_states, seen.get("h")


def contrastive_batch(lengths, padding_side="left", seed=0, with_corrupted=True):
    ids, mask, rows = random_batch(len(lengths), lengths, padding_side, seed=seed)
    cids, cmask, crows = random_batch(len(lengths), lengths, padding_side, seed=seed + 50)
    g = torch.Generator().manual_seed(seed)
    batch = dict(
        input_ids=ids,
        attention_mask=mask,
        correct_id=torch.randint(3, 96, (len(lengths),), generator=g),
        wrong_id=torch.randint(3, 96, (len(lengths),), generator=g),
    )
    if with_corrupted:
        batch.update(corrupted_input_ids=cids, corrupted_attention_mask=cmask)
    return batch, rows, crows


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("prompts", ["corrupted", "clean"])
def test_steering_grid_matches_full_forward_passes(arch, prompts):
    model = tiny_model(arch)
    d = model.config.hidden_size
    vectors = torch.randn(3, d, generator=torch.Generator().manual_seed(7))
    multipliers = [-4.0, 0.5, 3.0]
    layers = [2, 0, 1]
    data = [contrastive_batch([4, 7, 5], seed=1), contrastive_batch([6, 3, 6, 2], seed=2)]
    batches = [b for b, _, _ in data]
    got = steering_grid(model, batches, vectors, multipliers, layers=layers, prompts=prompts)

    steered = torch.zeros(len(layers), len(multipliers), 0, dtype=torch.float64)
    vanilla = []
    with torch.no_grad():
        for batch, rows, crows in data:
            per = torch.zeros(len(layers), len(multipliers), len(rows), dtype=torch.float64)
            for b, row in enumerate(crows if prompts == "corrupted" else rows):
                c, w = int(batch["correct_id"][b]), int(batch["wrong_id"][b])
                logits, _, _ = run_unpadded(model, row)
                vanilla.append(float(logits[c] - logits[w]))
                for i, layer in enumerate(layers):
                    for j, lam in enumerate(multipliers):
                        logits, _, _ = run_unpadded(model, row, layer, lam * vectors[layer])
                        per[i, j, b] = float(logits[c] - logits[w])
            steered = torch.cat([steered, per], -1)
    vanilla = torch.tensor(vanilla, dtype=torch.float64)
    # the reference margins are far from 0, so the signs (accuracies) are unambiguous
    assert float(steered.abs().min()) > 1e-4 and float(vanilla.abs().min()) > 1e-4
    assert got.num_prompts == 7
    assert got.layers == layers and got.multipliers == multipliers
    assert got.margin.shape == got.accuracy.shape == (3, 3)
    torch.testing.assert_close(got.margin, steered.mean(-1), rtol=1e-4, atol=1e-5)
    assert torch.equal(got.accuracy, (steered > 0).double().mean(-1))
    assert got.vanilla_margin == pytest.approx(float(vanilla.mean()), rel=1e-4, abs=1e-5)
    assert got.vanilla_accuracy == float((vanilla > 0).double().mean())
    assert len(set(got.accuracy.flatten().tolist())) > 1  # steering changes the accuracy


def test_steering_grid_rejects_right_padding_and_unpaired_batches():
    model = tiny_model("llama")
    vectors = torch.zeros(3, 32)
    batch, _, _ = contrastive_batch([4, 7, 5], padding_side="right")
    with pytest.raises(ValueError, match="needs left-padded prompts.*padding_side: left"):
        steering_grid(model, [batch], vectors, [1.0])
    batch, _, _ = contrastive_batch([4, 7, 5], with_corrupted=False)
    with pytest.raises(ValueError, match="A2A needs contrastive pairs: the batches have no"):
        steering_grid(model, [batch], vectors, [1.0])
    with pytest.raises(ValueError, match="evaluation split is empty"):
        steering_grid(model, [], vectors, [1.0])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_activation_difference_is_resid_post_clean_minus_corrupted(arch, padding_side):
    model = tiny_model(arch)
    batch, rows, crows = contrastive_batch([4, 7, 5], padding_side=padding_side, seed=3)
    got = activation_difference(model, batch)
    num_layers = model.config.num_hidden_layers
    assert got.shape == (3, num_layers, model.config.hidden_size)
    with torch.no_grad():
        for b in range(3):
            acts = []
            for row in (rows[b], crows[b]):
                # hidden_states[l + 1] is resid_post of layer l, except the last entry, which is
                # after the final norm: the last layer's output is read with a hook instead
                _, hidden, last = run_unpadded(model, row, out_layer=num_layers - 1)
                acts.append(torch.stack([*(h[0, -1] for h in hidden[1:num_layers]), last]))
            torch.testing.assert_close(got[b], acts[0] - acts[1], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The module end to end
# --------------------------------------------------------------------------------------------


def test_training_step_needs_contrastive_pairs(tiny_backbone_dir):
    module = A2AModule(backbone=tiny_backbone_dir, top_k=2)
    batch, _, _ = contrastive_batch([4, 5], with_corrupted=False)
    with pytest.raises(ValueError, match="A2A needs contrastive pairs.*contrast: system"):
        module.training_step(batch, 0)


def test_a2a_module_fits_on_the_extraversion_contrast(tiny_backbone_dir, tmp_path):
    from datamodules import MWEDataModule
    from datamodules.base import default_data_dir

    if not (default_data_dir() / "mwe" / "persona").is_dir():
        pytest.skip("../shared/data (mwe/persona) is not available")
    dm = MWEDataModule(
        behavior="extraversion",
        contrast="system",
        max_examples=24,
        batch_size=8,
        backbone=tiny_backbone_dir,
    )
    dm.setup()
    example = dm.train_examples[0]
    if dm.token_length(example.prompt) != dm.token_length(example.corrupted_prompt):
        pytest.fail("the extraversion descriptions have unequal token lengths with SmolLM2")
    mults = (-64.0, 64.0)  # large enough to change some answers of the random tiny model
    module = A2AModule(backbone=tiny_backbone_dir, steps=2, multipliers=mults, top_k=2)
    trainer = L.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)

    num_train, num_val, num_test = len(dm.train_examples), len(dm.val_examples), 24 - 9 - 2
    assert (num_train, num_val) == (9, 2)
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(module.results))  # written as returned
    methods = [f"a2a_{m}" for m in A2A_METHODS] + ["actdiff", "mid", "grid_val"]
    assert set(metrics["layer_scores"]) == set(metrics["rankings"]) == set(methods)
    assert metrics["num_layers"] == 3 and metrics["top_k"] == 2
    assert metrics["multipliers"] == list(mults)
    for key in ("val/accuracy", "val/margin", "test/accuracy", "test/margin"):
        assert torch.tensor(metrics[key]).shape == (3, 2), key
    for name, scores in metrics["layer_scores"].items():
        assert len(scores) == 3
        assert metrics["rankings"][name] == rank_layers(torch.tensor(scores, dtype=torch.float64))
    test_acc = torch.tensor(metrics["test/accuracy"])
    assert metrics["test/relevance"]["accuracy"] == (
        layer_relevance(test_acc, metrics["test/vanilla_accuracy"]).tolist()
    )
    assert torch.all((test_acc * num_test - (test_acc * num_test).round()).abs() < 1e-9)

    # the graph: one merged graph over the training split; the A2A scores are its layer scores
    graph = AttributionGraph.load(resolve_run(tmp_path) / "graph.safetensors")
    assert graph.num_examples == num_train and graph.steps == 2
    for m, scores in layer_scores(graph).items():
        assert metrics["layer_scores"][f"a2a_{m}"] == pytest.approx(scores.tolist(), rel=1e-6)

    # nDCG of every method (and the random baseline) at 1, 5, 10 for both ground truths
    for kind in ("accuracy", "margin"):
        table = metrics["ndcg"][kind]
        assert set(table) == {*methods, "random"}
        for name, row in table.items():
            assert set(row) == {"ndcg@1", "ndcg@5", "ndcg@10"}
            assert all(0.0 <= v <= 1.0 + 1e-9 for v in row.values()), (kind, name)
            if name != "random":
                scores = torch.tensor(metrics["layer_scores"][name], dtype=torch.float64)
                relevance = torch.tensor(metrics["test/relevance"][kind])
                for k in (1, 5, 10):
                    want = ndcg(scores, relevance, min(k, 3))
                    assert row[f"ndcg@{k}"] == pytest.approx(want), (kind, name, k)

    top = metrics["top_k_steering"]
    assert set(top) == {*methods, "random", "grid", "vanilla"}
    val_acc = torch.tensor(metrics["val/accuracy"])
    for name in methods:
        chosen = top[name]["chosen_layer"]
        assert (
            top[name]["layers"]
            == rank_layers(torch.tensor(metrics["layer_scores"][name], dtype=torch.float64))[:2]
        )
        assert chosen in top[name]["layers"]
        j = mults.index(top[name]["chosen_multiplier"])
        assert float(val_acc[chosen, j]) == float(val_acc[top[name]["layers"]].max())
        assert top[name]["test_accuracy"] == pytest.approx(float(test_acc[chosen, j]))
    assert float(val_acc[top["grid"]["chosen_layer"]].max()) == float(val_acc.max())
    assert top["vanilla"]["test_accuracy"] == metrics["test/vanilla_accuracy"]

    cost = metrics["cost"]
    assert cost["num_attribution"] == num_train
    assert (cost["num_val"], cost["num_test"]) == (num_val, num_test)
    assert cost["forward_equivalents"] == cost_forward_equivalents(num_train, 2, num_val, 3, 2, 2)

    edit = load_intervention(resolve_run(tmp_path) / "intervention")
    torch.testing.assert_close(edit.params["resid_post"][:, 0], module.steering_vectors())
    extra = json.loads((resolve_run(tmp_path) / "intervention" / "intervention.json").read_text())[
        "extra"
    ]
    assert extra["best_layer"] == top["grid"]["chosen_layer"]
    assert (resolve_run(tmp_path) / "plots" / "layer_scores.png").is_file()


def test_method_costs_by_hand():
    """|D| = 40 pairs, |E| = 10 prompts, M = 2, L = 6, k = 2, m = 5; grid 12 s, attribution
    30 s, activation difference 3 s."""
    metrics = {
        "num_layers": 6,
        "top_k": 2,
        "multipliers": [1.0, 2.0],
        "steps": 5,
        "cost": {
            "num_attribution": 40,
            "num_val": 10,
            "seconds": {"grid_val": 12.0, "attribution": 30.0, "actdiff": 3.0},
        },
    }
    costs = method_costs(metrics)
    assert costs["grid"] == {"forward_equivalents": 120.0, "seconds": 12.0}  # 6 * 2 * 10
    assert costs["a2a"] == {"forward_equivalents": 640.0, "seconds": 34.0}  # 15*40 + 2*2*10
    assert costs["actdiff"] == {"forward_equivalents": 120.0, "seconds": 7.0}  # 2*40 + 40
    assert costs["random"] == costs["mid"] == {"forward_equivalents": 40.0, "seconds": 4.0}


def test_target_wrong_swaps_the_answers_everywhere(tiny_backbone_dir):
    batch = {"correct_id": torch.tensor([5, 6]), "wrong_id": torch.tensor([7, 8]), "x": 1}
    same = next(iter(A2AModule(backbone=tiny_backbone_dir, top_k=2)._targeted([batch])))
    assert same["correct_id"].tolist() == [5, 6] and same["wrong_id"].tolist() == [7, 8]
    module = A2AModule(backbone=tiny_backbone_dir, top_k=2, steer_toward="wrong")
    swapped = next(iter(module._targeted([batch])))
    assert swapped["correct_id"].tolist() == [7, 8] and swapped["wrong_id"].tolist() == [5, 6]
    assert swapped["x"] == 1 and batch["correct_id"].tolist() == [5, 6]  # input not modified
    with pytest.raises(ValueError, match="steer_toward must be 'correct' or 'wrong'"):
        A2AModule(backbone=tiny_backbone_dir, top_k=2, steer_toward="foil")


A2A_CONFIGS = sorted(
    str(p.relative_to(Path(__file__).resolve().parents[1]))
    for p in (Path(__file__).resolve().parents[1] / "configs" / "a2a").glob("*.yaml")
)


@pytest.mark.parametrize("config", A2A_CONFIGS)
def test_every_a2a_config_runs_through_the_cli(config, tiny_backbone_dir, tmp_path):
    """Each config as committed (only sizes shrunk), with a CSV logger: Lightning merges the
    model's and the data's hyperparameters for a logger, so a clash of names would fail here."""
    from interventions.cli import build_cli

    root = Path(__file__).resolve().parents[1]
    data = (
        ["--data.max_examples=12", "--data.batch_size=4"]
        if "MWE" in (root / config).read_text()
        else ["--data.num_train=4", "--data.num_val=4", "--data.num_test=4", "--data.batch_size=4"]
    )
    cli = build_cli(
        [
            "--config", str(root / config),
            f"--model.backbone={tiny_backbone_dir}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--model.steps=1", "--model.top_k=2",
            *data,
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert len(metrics["test/accuracy"]) == 3  # the tiny backbone's layers
    assert set(metrics["ndcg"]["accuracy"]) >= {"a2a_in", "a2a_out", "actdiff", "random", "mid"}
