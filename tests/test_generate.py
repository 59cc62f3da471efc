"""Steered text: ``steered_continuations`` and ``python -m interventions generate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_hooks import _fill as _filled

from interventions.commands import generate as main
from interventions.core.backbone import load_backbone
from interventions.core.hooks import attach
from interventions.core.sites import model_dims
from interventions.edits import EDITS, SteerVec
from interventions.edits.artifact import save_intervention
from interventions.evaluation.generation import steered_continuations
from interventions.methods.w2s import W2SModule

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Then, John and Mary went to the store. John gave a drink to"


def _greedy(model, ids, steps):
    """Reference greedy decoding without generate(): argmax of the full sequence each step."""
    seq = ids
    for _ in range(steps):
        nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq[:, ids.shape[1] :]


def _edit(kind, dims, length, scale=30.0):
    sites = {"auscale": ["mlp_act"], "aushift": ["attn_z"]}.get(kind, ["attn_out", "mlp_out"])
    config = dict(sites=sites, positions="all")
    if EDITS[kind].position_tied:
        config["num_positions"] = length
    return _filled(EDITS[kind](dims, **config), scale=scale)


@pytest.mark.parametrize("kind", ["activscalar", "steervec", "dynscalar", "auscale", "aushift"])
def test_generate_command_for_every_edit_type(tiny_backbone_dir, tmp_path, kind, capsys):
    model, tok = load_backbone(tiny_backbone_dir)
    ids = tok([PROMPT], return_tensors="pt")["input_ids"]
    edit = _edit(kind, model_dims(model), ids.shape[1])
    folder = save_intervention(edit, tmp_path / kind, backbone=tiny_backbone_dir)
    samples = main(
        ["--intervention", str(folder), "--prompt", PROMPT, "--beta", "1", "0", "-1"]
        + ["--max-new-tokens", "6", "--device", "cpu"]
    )
    printed = capsys.readouterr().out
    assert "beta +1" in printed and "beta -1" in printed
    (sample,) = samples
    assert set(sample["continuations"]) == {1.0, 0.0, -1.0}
    for beta, text in sample["continuations"].items():
        with attach(model, edit, beta=beta):
            expected = _greedy(model, ids, 6)
        assert text == tok.decode(expected[0], skip_special_tokens=True), beta
    assert sample["continuations"][1.0] != sample["continuations"][0.0]


def test_generate_runs_as_a_module_from_the_shell(tiny_backbone_dir, tmp_path):
    model, tok = load_backbone(tiny_backbone_dir)
    edit = _filled(SteerVec(model_dims(model), sites=["resid_post"], positions="last"))
    folder = save_intervention(edit, tmp_path / "caa", backbone=tiny_backbone_dir)
    cmd = [sys.executable, "-m", "interventions", "generate", "--intervention", str(folder)]
    cmd += ["--prompt", "Hello there", "--prompt", PROMPT, "--beta", "2", "--max-new-tokens", "3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("--- prompt") == 2 and "beta +2" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "interventions", "steer"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "commands: data, generate" in bad.stderr


def test_module_help_lists_the_commands(capsys):
    """``python -m interventions --help`` / ``-h`` exit 0 with the usage and every command; an
    unknown command still exits nonzero with the list."""
    from interventions.__main__ import COMMANDS
    from interventions.__main__ import main as module_main

    for flag in ("--help", "-h"):
        module_main([flag])  # returns normally: exit status 0
        out = capsys.readouterr().out
        assert "usage: python -m interventions <command>" in out
        assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit) as info:
        module_main(["steer"])
    assert "unknown command 'steer'; commands: data, generate" in str(info.value.code)
    done = subprocess.run(
        [sys.executable, "-m", "interventions", "-h"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "generate" in done.stdout, done.stderr


def test_w2s_predictor_picks_the_layer(tiny_backbone_dir, tmp_path):
    """With --predictor, each prompt is steered at its predicted layer only."""
    model, tok = load_backbone(tiny_backbone_dir)
    dims = model_dims(model)
    vectors = _filled(SteerVec(dims, sites=["resid_post"], positions="last"), scale=2.0)
    folder = save_intervention(vectors, tmp_path / "intervention", backbone=tiny_backbone_dir)
    torch.manual_seed(0)
    predictor = W2SModule(backbone=tiny_backbone_dir, in_dim=dims.d_model, label_layers=[0, 2])
    encoder = {"encoder": "lm_internal", "backbone": tiny_backbone_dir, "pooling": "last"}
    predictor.export(tmp_path / "w2s_predictor", encoder=encoder)
    prompts = ["Hello there, how are", PROMPT]
    samples = main(
        ["--intervention", str(folder), "--predictor", str(tmp_path / "w2s_predictor")]
        + ["--beta", "1", "--max-new-tokens", "5", "--device", "cpu"]
        + [arg for p in prompts for arg in ("--prompt", p)]
    )
    from interventions.methods.w2s.encoders import encode_prompts

    layers = predictor.predict_layer(encode_prompts(prompts, **encoder))
    for prompt, layer, sample in zip(prompts, layers.tolist(), samples, strict=True):
        only = SteerVec(dims, sites=["resid_post"], layers=[layer], positions="last")
        with torch.no_grad():
            only.params["resid_post"].copy_(vectors.params["resid_post"][layer : layer + 1])
        ids = tok([prompt], return_tensors="pt")["input_ids"]
        with attach(model, only, beta=1.0):
            expected = tok.decode(_greedy(model, ids, 5)[0], skip_special_tokens=True)
        assert sample["continuations"][1.0] == expected


def test_bad_input_is_refused_clearly(tiny_backbone_dir, tmp_path):
    model, tok = load_backbone(tiny_backbone_dir)
    n = len(tok(PROMPT)["input_ids"])
    edit = _edit("activscalar", model_dims(model), n)
    folder = save_intervention(edit, tmp_path / "tied", backbone=tiny_backbone_dir)
    with pytest.raises(ValueError, match=rf"each of {n} prompt positions.*\[{n + 3}\] tokens"):
        main(
            ["--intervention", str(folder), "--prompt", PROMPT + " her and the", "--device", "cpu"]
        )
    # an intervention exported for another architecture
    other = tiny_model("gpt2")
    foreign = save_intervention(
        _filled(SteerVec(model_dims(other), sites=["resid_post"], positions="last")),
        tmp_path / "gpt2",
        backbone="gpt2-tiny",
    )
    with pytest.raises(ValueError, match="made for gpt2.*the model is llama"):
        main(["--intervention", str(foreign), "--backbone", tiny_backbone_dir, "--prompt", "Hi"])
    meta = json.loads((folder / "intervention.json").read_text())
    meta["backbone"] = None
    (folder / "intervention.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="names no backbone: pass --backbone"):
        main(["--intervention", str(folder), "--prompt", PROMPT])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        steered_continuations(model, tok, edit, [PROMPT], max_new_tokens=0)
