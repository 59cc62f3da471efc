"""Sites and hooks on tiny random models of every supported architecture."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import ARCHS, random_batch, tiny_config, tiny_model
from transformers import AutoModelForCausalLM

from interventions.core.errors import ConfigError
from interventions.core.hooks import (
    attach,
    keep_last_column,
    last_token_index,
    last_token_logits,
    position_ids,
    record,
)
from interventions.core.kv_cache import cache_keyword, output_cache
from interventions.core.sites import SITES, check_sites, model_dims, site_module
from interventions.edits import ActivScalar, AUScale, AUShift, DynScalar, SteerVec


def _fill(edit, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edit.params.values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return edit


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_decomposition(arch):
    """resid_pre + attn_out + mlp_out == resid_post at every layer (to 1e-5)."""
    model = tiny_model(arch)
    dims = model_dims(model)
    ids, mask, _ = random_batch(2, [7, 7], "right")
    sites = ("resid_post", "attn_out", "mlp_out")
    points = [(layer, s) for layer in range(dims.num_layers) for s in sites]
    with record(model, points) as acts:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for layer in range(dims.num_layers):
        resid_pre = out.hidden_states[layer]
        total = resid_pre + acts[(layer, "attn_out")] + acts[(layer, "mlp_out")]
        torch.testing.assert_close(total, acts[(layer, "resid_post")], atol=1e-5, rtol=1e-5)
        if layer < dims.num_layers - 1:  # the last hidden state is after the final norm
            torch.testing.assert_close(acts[(layer, "resid_post")], out.hidden_states[layer + 1])


@pytest.mark.parametrize("arch", ARCHS)
def test_site_widths(arch):
    model = tiny_model(arch)
    dims = model_dims(model)
    ids, mask, _ = random_batch(1, [5], "right")
    points = [(0, s) for s in SITES]
    with record(model, points) as acts:
        model(input_ids=ids, attention_mask=mask)
    for site in SITES:
        assert acts[(0, site)].shape == (1, 5, dims.width(site)), site


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", [ActivScalar, SteerVec, DynScalar])
def test_zero_beta_or_zero_params_is_exact(arch, kind):
    model = tiny_model(arch)
    dims = model_dims(model)
    ids, mask, _ = random_batch(3, [6, 6, 6], "left")
    clean = model(input_ids=ids, attention_mask=mask).logits
    edit = _fill(kind(dims, sites=list(SITES), positions="all", num_positions=6))
    with attach(model, edit, beta=0.0):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, clean)
    edit = kind(dims, sites=list(SITES), positions="all", num_positions=6, init_std=0.0)
    with attach(model, edit, beta=1.0):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, clean)
    with attach(model, _fill(edit), beta=1.0):  # and a real edit does change them
        assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, clean)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "phi3", "gemma2"])
def test_resid_post_edit_equals_hand_edit_of_hidden_states(arch):
    model = tiny_model(arch)
    dims = model_dims(model)
    ids, mask, _ = random_batch(2, [6, 6], "right")
    clean = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    layer = 1
    edit = _fill(ActivScalar(dims, sites=["resid_post"], layers=[layer], num_positions=6))
    alpha = edit.params["resid_post"][0, :, 0]  # [positions]
    beta = torch.tensor([1.0, -0.5])
    with attach(model, edit, beta=beta):
        edited = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    expected = clean[layer + 1] * (1 + beta[:, None, None] * alpha[None, :, None])
    torch.testing.assert_close(edited[layer + 1], expected)
    for earlier in range(layer + 1):
        assert torch.equal(edited[earlier], clean[earlier])
    assert not torch.allclose(edited[layer + 2], clean[layer + 2])


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "qwen2", "phi3", "gemma2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize(
    "make",
    [
        lambda d: ActivScalar(d, sites=["attn_z", "mlp_out"], positions=[0, 2, 3]),
        lambda d: SteerVec(d, sites=["resid_post", "mlp_act"], positions="last"),
        lambda d: DynScalar(d, sites=["attn_out", "attn_z"], positions="all"),
    ],
    ids=["activscalar-positions", "steervec-last", "dynscalar-all"],
)
def test_batched_equals_one_at_a_time(arch, padding_side, make):
    model = tiny_model(arch)
    edit = _fill(make(model_dims(model)))
    lengths = [5, 8, 6, 8]
    ids, mask, rows = random_batch(4, lengths, padding_side, seed=3)
    beta = torch.tensor([1.0, -1.0, 0.5, 2.0])
    with attach(model, edit, beta=beta):
        batched = last_token_logits(model, ids, mask)
    for b, row in enumerate(rows):
        with attach(model, edit, beta=float(beta[b])):
            single = last_token_logits(model, row[None], torch.ones(1, len(row), dtype=torch.long))
        torch.testing.assert_close(batched[b], single[0], atol=1e-5, rtol=1e-5)


def test_positions_counted_on_real_tokens(llama):
    ids, mask, _ = random_batch(2, [3, 5], "left")
    with attach(llama, _Spy()) as session:
        llama(input_ids=ids, attention_mask=mask)
    assert session.ctx.pos.tolist() == [[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert session.ctx.last.tolist() == [[False] * 4 + [True], [False] * 4 + [True]]
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


class _Spy:
    def points(self):
        return []

    def prepare(self, ctx, beta):
        return None


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize(
    "make",
    [
        # the prompts have 6 and 4 tokens: prompt positions as a list (positions="all" would
        # refuse the 4-token prompt, see test_position_tied_edit_refuses_other_prompt_lengths)
        lambda d: ActivScalar(d, sites=["attn_out", "mlp_out"], positions=list(range(6))),
        lambda d: SteerVec(d, sites=["resid_post"], positions="last"),
        lambda d: DynScalar(d, sites=["mlp_out", "attn_z"], positions="all"),
    ],
    ids=["activscalar-prompt", "steervec-last", "dynscalar-every"],
)
def test_generate_with_cache_equals_loop_without_cache(arch, make):
    model = tiny_model(arch)
    edit = _fill(make(model_dims(model)), scale=1.0)
    ids, mask, _ = random_batch(2, [6, 4], "left", seed=1)
    gen_kwargs = dict(
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with attach(model, edit, beta=torch.tensor([1.0, -1.0])):
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
    # reference: re-run the whole growing sequence each step, no cache, inside one block
    seq, seq_mask, step_logits = ids, mask, []
    with attach(model, edit, beta=torch.tensor([1.0, -1.0])):
        for _ in range(5):
            logits = model(
                input_ids=seq,
                attention_mask=seq_mask,
                position_ids=position_ids(seq_mask),
                use_cache=False,
            ).logits[:, -1]
            step_logits.append(logits)
            nxt = logits.argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out.sequences, seq)
    for cached, loop in zip(out.logits, step_logits, strict=True):
        torch.testing.assert_close(cached, loop, atol=1e-5, rtol=1e-5)
    plain = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
    # the edit does act on the generated steps (the last step's logits differ)
    assert not torch.allclose(plain.logits[-1], out.logits[-1], atol=1e-4)


EDIT_TYPES = {
    "activscalar-prompt": lambda d: ActivScalar(  # prompts of 6 and 4 tokens: a position list
        d, sites=["attn_out", "mlp_out"], positions=list(range(6))
    ),
    "steervec-last": lambda d: SteerVec(d, sites=["resid_post"], positions="last"),
    "dynscalar-every": lambda d: DynScalar(d, sites=["mlp_out", "attn_z"], positions="all"),
    "auscale-last": lambda d: AUScale(d, sites=["mlp_act"], positions="last"),
    "aushift-every": lambda d: AUShift(d, sites=["attn_z"], positions="all"),
}


def _decode(model, ids, mask, steps, keyword, cache_position):
    """Greedy cached decoding, calling the model the way one transformers release or another does.

    ``keyword`` is the name the cache is passed under as the pre-hooks see it: ``"cache"``
    (transformers >= 5.24), ``"past_key_values"`` (before), or ``"hidden"``: the cache reaches
    ``forward`` but no pre-hook can see it (a wrapper that holds it itself).  ``cache_position``
    adds the column positions older ``generate()`` passed.  A pre-hook registered after
    ``attach``'s (so it runs after it) renames the cache to what the installed model takes.
    """
    takes = cache_keyword(model)
    takes_cache_position = "cache_position" in inspect.signature(model.forward).parameters
    held: dict = {}

    def hand_over(module, args, kwargs):
        for name in ("cache", "past_key_values"):
            if name in kwargs:
                kwargs[takes] = kwargs.pop(name)
        if "cache" in held:
            kwargs[takes], kwargs["use_cache"] = held["cache"], True
        if not takes_cache_position:
            kwargs.pop("cache_position", None)
        return args, kwargs

    handle = model.register_forward_pre_hook(hand_over, with_kwargs=True)
    try:
        cache, step_logits, seq, seq_mask = None, [], ids, mask
        new_ids, new_pos = ids, position_ids(mask)
        for _ in range(steps):
            kwargs = dict(input_ids=new_ids, attention_mask=seq_mask, position_ids=new_pos)
            if cache_position:
                past = seq_mask.shape[1] - new_ids.shape[1]
                kwargs["cache_position"] = torch.arange(past, seq_mask.shape[1])
            if cache is not None and keyword != "hidden":
                kwargs[keyword] = cache
            out = model(**kwargs, use_cache=True)
            cache = output_cache(out)
            if keyword == "hidden":
                held["cache"] = cache
            logits = out.logits[
                torch.arange(len(ids)), last_token_index(seq_mask[:, -new_ids.shape[1] :])
            ]
            step_logits.append(logits)
            nxt = logits.argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)], 1)
            new_ids, new_pos = nxt, (seq_mask.sum(1) - 1)[:, None]
    finally:
        handle.remove()
    return seq, step_logits


def _decode_without_cache(model, ids, mask, steps):
    """Reference: re-run the whole growing sequence each step, no cache."""
    seq, seq_mask, step_logits = ids, mask, []
    for _ in range(steps):
        logits = model(
            input_ids=seq,
            attention_mask=seq_mask,
            position_ids=position_ids(seq_mask),
            use_cache=False,
        ).logits
        logits = logits[torch.arange(len(ids)), last_token_index(seq_mask)]
        step_logits.append(logits)
        nxt = logits.argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    return seq, step_logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("keyword", ["cache", "past_key_values", "hidden"])
@pytest.mark.parametrize(
    "cache_position", [True, False], ids=["cache_position", "no_cache_position"]
)
@pytest.mark.parametrize("kind", list(EDIT_TYPES))
def test_cached_decoding_under_every_cache_convention(arch, padding, keyword, cache_position, kind):
    """Cached decoding == the no-cache loop, whatever name the cache comes under, with or without
    ``cache_position``, left or right padding, for every edit type."""
    model = tiny_model(arch)
    edit = _fill(EDIT_TYPES[kind](model_dims(model)), scale=1.0)
    ids, mask, _ = random_batch(2, [6, 4], padding, seed=1)
    beta = torch.tensor([1.0, -1.0])
    with attach(model, edit, beta=beta):
        cached, cached_logits = _decode(model, ids, mask, 4, keyword, cache_position)
    with attach(model, edit, beta=beta):
        loop, loop_logits = _decode_without_cache(model, ids, mask, 4)
    assert torch.equal(cached, loop)
    for a, b in zip(cached_logits, loop_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _, plain_logits = _decode_without_cache(model, ids, mask, 4)
    # the edit acts on the generated steps, not only on the prompt
    assert not torch.allclose(plain_logits[-1], loop_logits[-1], atol=1e-4)


def test_errors(llama):
    dims = model_dims(llama)
    with pytest.raises(ValueError, match="Unknown site 'resid_pre'.*resid_post"):
        ActivScalar(dims, sites=["resid_pre"], positions="last")
    with pytest.raises(ValueError, match="out of range.*0..2"):
        ActivScalar(dims, sites=["mlp_out"], layers=[3], positions="last")
    with pytest.raises(ValueError, match="num_positions"):
        ActivScalar(dims, sites=["mlp_out"], positions="all")
    with pytest.raises(ValueError, match="Unknown site"):
        site_module(llama, 0, "nope")
    bert_like = torch.nn.Linear(2, 2)
    bert_like.config = type("C", (), {"model_type": "bert"})()
    with pytest.raises(ValueError, match="not in the sites table.*gpt2.*llama"):
        model_dims(bert_like)
    edit = ActivScalar(dims, sites=["mlp_out"], positions="last")
    with pytest.raises(ValueError, match="beta has 3 rows but the batch has 2"):
        with attach(llama, edit, beta=torch.ones(3)):
            llama(input_ids=torch.ones(2, 4, dtype=torch.long))
    other = tiny_model("gpt2")
    with pytest.raises(ValueError, match="made for llama.*the model is gpt2"):
        with attach(other, edit):
            pass
    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 2
    smaller = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match="llama with 3 layers.*llama with 2 layers"):
        with attach(smaller, edit):
            pass


def test_site_names_one_line_errors_with_a_suggestion(llama):
    """A single site name works like a one-item list; an unknown name is a one-line ConfigError
    that names it, lists the valid sites and suggests the nearest; so is an unknown
    architecture, which names the model type, the families and the file to add a row to."""
    dims = model_dims(llama)
    assert check_sites("attn_out") == ["attn_out"]
    assert check_sites(["mlp_out", "attn_out", "mlp_out"]) == ["mlp_out", "attn_out"]
    assert ActivScalar(dims, sites="attn_out", positions="last").sites == ["attn_out"]
    assert DynScalar(dims, sites="mlp_act").points() == [(i, "mlp_act") for i in range(3)]
    with pytest.raises(ConfigError) as info:
        ActivScalar(dims, sites=["attn_out", "mlp"], positions="last")
    message = str(info.value)
    assert "\n" not in message and "'mlp'" in message and "Did you mean 'mlp_out'" in message
    assert all(site in message for site in SITES)
    with pytest.raises(ConfigError, match="Unknown site 'atn_z'.*Did you mean 'attn_z'"):
        SteerVec(dims, sites="atn_z", positions="last")
    with pytest.raises(ConfigError, match="sites is empty"):
        check_sites([])
    bert_like = torch.nn.Linear(2, 2)
    bert_like.config = type("C", (), {"model_type": "bert"})()
    with pytest.raises(ConfigError) as info:
        model_dims(bert_like)
    message = str(info.value)
    assert "\n" not in message and "'bert'" in message
    assert "llama (llama, mistral, qwen2, qwen3)" in message and "gemma" in message
    assert "add a row to ARCHITECTURES in interventions/core/sites.py" in message
    # ... with the keys a row needs, and the docs page that walks through one (Phi-3)
    for key in ("model_types=('bert',)", "layers_path", "SiteSpec", "dims", "norms", "qkv"):
        assert key in message, key
    assert "phi3 (phi3)" in message and "docs/your-model.md" in message


@pytest.mark.parametrize("kind", [ActivScalar, SteerVec])
def test_position_tied_edit_refuses_other_prompt_lengths(llama, kind):
    """attach refuses prompts of another length than a positions="all" edit was made for, in a
    plain call and under generate() (naming both lengths), and checks the prefill only: cached
    decoding steps and a growing no-cache loop continue the prompt and are not refused."""
    edit = _fill(kind(model_dims(llama), sites=["attn_out"], positions="all", num_positions=6))
    ids, mask, _ = random_batch(2, [4, 7], "left", seed=2)
    with pytest.raises(ValueError, match=r"each of 6 prompt positions.*\[4, 7\] tokens"):
        with attach(llama, edit, beta=1.0):
            llama(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match=r"each of 6 prompt positions.*\[7\] tokens"):
        with attach(llama, edit, beta=1.0):
            llama.generate(input_ids=ids[1:], max_new_tokens=3, do_sample=False, pad_token_id=0)
    # two 6-token prompts, left padded by one extra column: real tokens are what count
    ids, mask, _ = random_batch(2, [6, 6], "left", seed=2)
    ids = torch.cat([torch.zeros_like(ids[:, :1]), ids], 1)
    mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with attach(llama, edit, beta=1.0):
        steered = llama.generate(input_ids=ids, attention_mask=mask, **gen)
    assert steered.shape == (2, 7 + 4)
    with attach(llama, edit, beta=1.0):  # no cache: re-run the growing sequence in one block
        seq, seq_mask = ids, mask
        for _ in range(4):
            logits = llama(
                input_ids=seq,
                attention_mask=seq_mask,
                position_ids=position_ids(seq_mask),
                use_cache=False,
            ).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(seq_mask[:, :1])], 1)
    assert torch.equal(seq, steered)
    # other edits take prompts of any length
    for other in (
        DynScalar(model_dims(llama), sites="attn_out"),
        kind(model_dims(llama), sites="attn_out", positions="last"),
        kind(model_dims(llama), sites="attn_out", positions=[0, 1], num_positions=6),
    ):
        ids, mask, _ = random_batch(2, [4, 7], "left", seed=2)
        with attach(llama, other, beta=1.0):
            llama(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_token_logits_equal_the_full_projection(arch, padding_side):
    """Only the columns where rows end are projected (``logits_to_keep`` as a 1-D index): the
    logits equal the full-vocabulary logits of every position, read at each row's last real
    token (rows of lengths 4, 7, 5: three end columns under right padding, one under left)."""
    model = tiny_model(arch)
    ids, mask, _ = random_batch(3, [4, 7, 5], padding_side, seed=1)
    pos = position_ids(mask)
    full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # [B, T, V]
    last = [int(m.nonzero().max()) for m in mask]
    expected = torch.stack([full[b, t] for b, t in enumerate(last)])
    torch.testing.assert_close(last_token_logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)
    kept = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep_last_column(ids)
    ).logits
    assert kept.shape[1] == 1
    torch.testing.assert_close(kept[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
