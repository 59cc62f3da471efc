"""Shared fixtures: tiny random-weight models of every supported architecture, built in-process."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96


class _DeprecatedCacheNames(logging.Handler):
    """Keeps transformers' log warnings about the deprecated cache names (``past_key_values`` /
    ``cache_params``, logged once per process when an output's old property is read)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecated" in message and ("past_key_values" in message or "cache_params" in message):
            self.messages.append(message)


_CACHE_NAMES = _DeprecatedCacheNames()
logging.getLogger("transformers").addHandler(_CACHE_NAMES)


@pytest.fixture(autouse=True)
def no_deprecated_cache_names():
    """Fail the test during which transformers logged that a deprecated cache name was used (the
    keyword itself is a FutureWarning, turned into an error in pyproject.toml)."""
    start = len(_CACHE_NAMES.messages)
    yield
    logged = _CACHE_NAMES.messages[start:]
    assert not logged, f"transformers says a deprecated cache name was used: {logged}"


def tiny_config(arch: str):
    """A 3-layer config of ``arch`` with distinct sizes for d_model, heads and d_mlp."""
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **common,
    )
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=3, n_head=4, n_inner=48, n_positions=128, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
            **common,
        )
    if arch == "llama":
        return LlamaConfig(**llama_like)
    if arch == "mistral":
        return MistralConfig(**llama_like)
    if arch == "qwen2":
        return Qwen2Config(**llama_like)
    if arch == "qwen3":
        return Qwen3Config(head_dim=8, **llama_like)
    if arch == "phi3":  # fused qkv_proj and gate_up_proj; head_dim = hidden_size / heads
        return Phi3Config(**llama_like)
    if arch == "gemma2":
        return Gemma2Config(head_dim=12, **llama_like)
    if arch == "gemma3_text":
        return Gemma3TextConfig(head_dim=12, **llama_like)
    raise ValueError(arch)


ARCHS = [
    "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"
]  # fmt: skip


def tiny_model(arch: str, seed: int = 0):
    """A frozen, eval-mode tiny random model (float32, eager attention)."""
    torch.manual_seed(seed)
    cfg = tiny_config(arch)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(params=ARCHS)
def arch_model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama():
    return tiny_model("llama")


def random_batch(batch: int, lengths: list[int], padding_side: str, seed: int = 0):
    """Random token ids with per-row lengths, padded on ``padding_side``."""
    g = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.zeros(batch, seq, dtype=torch.long)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    rows = []
    for b, n in enumerate(lengths):
        row = torch.randint(3, VOCAB, (n,), generator=g)
        rows.append(row)
        if padding_side == "left":
            ids[b, seq - n :] = row
            mask[b, seq - n :] = 1
        else:
            ids[b, :n] = row
            mask[b, :n] = 1
    return ids, mask, rows


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (the first run builds the backbone cache once)."""
    from interventions.core.backbone import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with SmolLM2's vocabulary, saved with its tokenizer: a local backbone
    folder that data modules and the trainer can load by path."""
    folder = tmp_path_factory.mktemp("tiny_smol")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(smol_tokenizer),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=smol_tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return str(folder)
