"""Steered text: greedy continuations of prompts under an edit at several betas.

:func:`steered_continuations` works with any edit (ActivScalar, SteerVec, DynScalar, AUSteer's
AUScale / AUShift, CAA vectors); it writes ``samples.md`` at the end of ``fit`` and is the core
of the shell command ``python -m interventions generate`` (:mod:`interventions.commands`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from interventions.core.dispatch import input_device
from interventions.core.hooks import attach
from interventions.edits import PointEdit


@torch.no_grad()
def steered_continuations(
    model: nn.Module,
    tokenizer: Any,
    edit: PointEdit,
    prompts: Sequence[str],
    betas: Sequence[float] = (1.0, 0.0, -1.0),
    max_new_tokens: int = 20,
    layer_of_prompt: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Greedy continuations of each prompt with ``edit`` attached at each beta.

    Args:
        model: the backbone the edit was made for.
        tokenizer: its tokenizer.
        edit: any edit (:func:`interventions.edits.artifact.load_intervention`).
        prompts: texts, tokenised as they are (apply a chat template first if the edit was
            trained on chat prompts); the tokenizer must pad on the left.  A position-tied edit
            refuses prompts of another token length than it was made for (at the prefill, see
            :meth:`~interventions.edits.PointEdit.check_prompt_lengths`).
        betas: strengths; ``0`` is the unedited model.
        max_new_tokens: new tokens per continuation.
        layer_of_prompt: ``[N]`` one layer per prompt (a W2S prediction): the edit acts only at
            that layer of each row (beta becomes ``[N, len(edit.layers)]``).

    Returns:
        One dict per prompt: ``prompt`` (text) and ``continuations`` (``{beta: text}``).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not prompts:
        raise ValueError("Give at least one prompt.")
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("Prompts must be left-padded for generation (tokenizer.padding_side).")
    device = input_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    texts = [
        tokenizer.decode(row[mask.bool()], skip_special_tokens=False)
        for row, mask in zip(input_ids, attention_mask, strict=True)
    ]
    rows = input_ids.shape[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = [{"prompt": text, "continuations": {}} for text in texts]
    for beta in betas:
        if layer_of_prompt is not None:
            layers = torch.tensor(edit.layers)
            strength = (layers[None, :] == layer_of_prompt.cpu()[:, None]).float() * float(beta)
            if bool((strength.sum(1) == 0).any()) and beta != 0:
                raise ValueError(
                    f"A predicted layer is not among the edit's layers {edit.layers}; the "
                    "predictor and the intervention do not belong together."
                )
        else:
            strength = torch.full((rows,), float(beta))
        with attach(model, edit, beta=strength.to(device)):
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        new = generated[:, input_ids.shape[1] :]
        for r in range(rows):
            out[r]["continuations"][float(beta)] = tokenizer.decode(
                new[r], skip_special_tokens=True
            )
    return out


def samples_markdown(samples: list[dict[str, Any]], title: str) -> str:
    """``samples.md``: one table per prompt, one row per beta."""
    lines = [f"# {title}", "", "Greedy continuations; β = 0 is the unedited model.", ""]
    for i, sample in enumerate(samples):
        lines += [f"## Prompt {i + 1}", "", "```", sample["prompt"], "```", ""]
        lines += ["| β | continuation |", "|---|---|"]
        for beta, text in sample["continuations"].items():
            cell = text.replace("|", "\\|").replace("\n", "⏎")
            lines.append(f"| {beta:+g} | {cell} |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["samples_markdown", "steered_continuations"]
