"""The shell commands of ``python -m interventions``.

``generate``: greedy continuations of prompts with an exported intervention at several betas ::

    python -m interventions generate --intervention runs/ioi/activscalar/latest/intervention \\
        --prompt "Then, John and Mary went to the store. John gave a drink to" --beta 1 0 -1

It steers with any exported edit (ActivScalar, SteerVec, DynScalar, AUSteer's AUScale /
AUShift, CAA vectors); with ``--predictor <run>/w2s_predictor`` a W2S layer predictor picks the
layer each prompt is steered at (the intervention then holds one vector per layer, as a W2S run
exports it).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

from interventions.core.backbone import load_backbone
from interventions.edits.artifact import load_intervention, read_intervention_config
from interventions.evaluation.generation import steered_continuations
from interventions.methods.w2s.encoders import encode_prompts, prompt_text
from interventions.methods.w2s.module import load_predictor

__all__ = ["generate"]


def _predicted_layers(predictor_dir: str, prompts: list[str], tokenizer: Any) -> Tensor:
    predictor = load_predictor(predictor_dir)
    encoder = predictor.encoder_config or {}
    name = encoder.get("encoder", "minilm")
    texts = prompts if name == "lm_internal" else [prompt_text(p, tokenizer) for p in prompts]
    embedding = encode_prompts(
        texts,
        encoder=name,
        backbone=encoder.get("backbone"),
        pooling=encoder.get("pooling", "last"),
    )
    return predictor.predict_layer(embedding)


def generate(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``python -m interventions generate``: print steered continuations."""
    parser = argparse.ArgumentParser(
        prog="python -m interventions generate",
        description="Greedy continuations of prompts with an exported intervention at each beta.",
    )
    parser.add_argument("--intervention", required=True, help="an exported intervention folder")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    parser.add_argument("--beta", type=float, nargs="+", default=[1.0, 0.0, -1.0])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument(
        "--backbone", help="model to steer (default: the one named in intervention.json)"
    )
    parser.add_argument(
        "--predictor", help="a W2S predictor folder: steer each prompt at its predicted layer"
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt in the tokenizer's chat template (user turn + assistant start)",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    meta = read_intervention_config(args.intervention)
    backbone = args.backbone or meta.get("backbone")
    if not backbone:
        raise SystemExit(f"{args.intervention} names no backbone: pass --backbone.")
    edit = load_intervention(args.intervention)
    model, tokenizer = load_backbone(backbone, dtype=args.dtype, device=args.device)
    prompts = list(args.prompt)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit(f"{backbone}'s tokenizer has no chat template: drop --chat.")
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    layers = None
    if args.predictor:
        layers = _predicted_layers(args.predictor, prompts, tokenizer)
    samples = steered_continuations(
        model,
        tokenizer,
        edit.to(args.device),
        prompts,
        betas=args.beta,
        max_new_tokens=args.max_new_tokens,
        layer_of_prompt=layers,
    )
    for i, sample in enumerate(samples):
        where = f" (W2S layer {int(layers[i])})" if layers is not None else ""
        print(f"--- prompt {i + 1}{where}: {sample['prompt']!r}")
        for beta, text in sample["continuations"].items():
            print(f"  beta {beta:+g}: {text!r}")
    return samples
