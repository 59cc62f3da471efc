"""The per-example layer sweep: propensity for every example x layer x steering multiplier.

Steering here means adding ``multiplier * v[layer]`` to ``resid_post`` of one layer at the answer
position: the prompt ends just before the answer token (``"...assistant\\n("``), so the prompt's
last token is the position whose next-token logits give the answer, and the tokens before it are
never steered.  Hence the sweep computes each prompt's key/value cache **once** and re-runs only
the last token for all (layer, multiplier) pairs: by default as parallel copies of that token in
one sequence, each seeing the prefix and itself (a 4-d attention mask), so the cache is never
copied; or as a batch of rows over a repeated cache, each row steering its own layer (a
``[rows, layers]`` beta, see :func:`interventions.core.hooks.attach`).  Multiplier 0 is the same for
every layer, so it is one shared row.  :func:`sweep_example_naive` is the reference that
re-runs the whole prompt for every pair; the two agree to float precision (tested) and
``bench/bench_sweep.py`` measures the speed-up.

Results are cached on disk, keyed by everything they depend on (backbone, data, split, steering
method, multipliers, a fingerprint of the prompts and of the steering vectors): a cache written
by another configuration is never reused.  The sweep is written in chunks of examples, each
atomically (temporary file + rename), so an interrupted sweep resumes at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions.core.backbone import cache_root
from interventions.core.dispatch import input_device
from interventions.core.distributed import (
    barrier,
    broadcast_object,
    gather_shards,
    is_distributed,
    rank_and_world,
    shard_range,
)
from interventions.core.hooks import (
    attach,
    keep_last_column,
    last_token_index,
    position_ids,
    record,
)
from interventions.core.kv_cache import output_cache, with_cache
from interventions.core.sites import model_dims
from interventions.edits import SteerVec
from interventions.evaluation.steerability import steerability_slopes

DEFAULT_MULTIPLIERS: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
SWEEP_FORMAT = 1


@dataclass
class SweepExample:
    """One tokenized example: the prompt (ending just before the answer) and the answer ids."""

    prompt_ids: Tensor  # [n] long, real tokens only
    positive_id: int  # token of the behaviour-matching answer
    negative_id: int  # token of the non-matching answer


def sweep_examples(batch_or_examples: Any, tokenizer: Any) -> list[SweepExample]:
    """:class:`SweepExample` list from :class:`datamodules.base.ContrastiveExample` objects
    (``correct`` = the matching answer)."""
    out = []
    for ex in batch_or_examples:
        ids = tokenizer(ex.prompt, return_tensors="pt")["input_ids"][0]
        pos = tokenizer.encode(ex.correct, add_special_tokens=False)
        neg = tokenizer.encode(ex.wrong, add_special_tokens=False)
        if len(pos) != 1 or len(neg) != 1:
            raise ValueError(
                f"answers must be one token each, got {ex.correct!r} -> {pos}, {ex.wrong!r} -> {neg}"
            )
        out.append(SweepExample(ids, int(pos[0]), int(neg[0])))
    return out


# ----------------------------------------------------------------------------- activations
def append_token(input_ids: Tensor, attention_mask: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
    """Put ``token[b]`` right after row ``b``'s last real token (left or right padding).

    Returns ``(ids, mask)`` one column wider than the input.
    """
    batch = input_ids.shape[0]
    ids = torch.cat([input_ids, input_ids.new_zeros(batch, 1)], 1)
    mask = torch.cat([attention_mask, attention_mask.new_zeros(batch, 1)], 1)
    if attention_mask.shape[1] > 0 and bool(attention_mask[:, -1].all()):  # left padded: append
        ids[:, -1] = token
        mask[:, -1] = 1
        return ids, mask
    idx = last_token_index(attention_mask) + 1
    rows = torch.arange(batch)
    ids[rows, idx] = token.to(ids.dtype)
    mask[rows, idx] = 1
    return ids, mask


@torch.no_grad()
def answer_activations(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    positive_id: Tensor,
    negative_id: Tensor,
    layers: Sequence[int],
    context_layers: Sequence[int] = (),
    site: str = "resid_post",
) -> tuple[Tensor, Tensor | None]:
    """Per-example activation differences at the answer token, for every layer in one pass.

    The batch is run twice as many rows: each prompt followed by its positive answer and by its
    negative answer.  Returns ``diff [batch, len(layers), d]`` (positive minus negative, at the
    answer token) and, if ``context_layers`` is given, ``context [batch, len(context_layers), d]``
    (the activation at the prompt's last token, which is the same in both rows).
    """
    ids_p, mask_p = append_token(input_ids, attention_mask, positive_id)
    ids_n, mask_n = append_token(input_ids, attention_mask, negative_id)
    ids = torch.cat([ids_p, ids_n])
    mask = torch.cat([mask_p, mask_n])
    points = sorted({(layer, site) for layer in [*layers, *context_layers]})
    with record(model, points) as acts:
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    batch = input_ids.shape[0]
    idx = last_token_index(mask)
    rows = torch.arange(2 * batch)
    at_answer = {layer: acts[(layer, site)][rows, idx] for layer in layers}  # [2B, d]
    diff = torch.stack([at_answer[ly][:batch] - at_answer[ly][batch:] for ly in layers], 1)
    context = None
    if context_layers:
        prev = idx[:batch] - 1
        context = torch.stack(
            [acts[(ly, site)][torch.arange(batch), prev] for ly in context_layers], 1
        )
    return diff.float(), None if context is None else context.float()


# ----------------------------------------------------------------------------- one example
def _steering_edit(model: nn.Module, vectors: Tensor, layers: Sequence[int]) -> SteerVec:
    """A SteerVec on resid_post at the answer position holding ``vectors [len(layers), d]``."""
    edit = SteerVec(model_dims(model), sites=["resid_post"], layers=list(layers), positions="last")
    with torch.no_grad():
        edit.params["resid_post"].copy_(vectors[:, None, :])
    edit.requires_grad_(False)
    return edit.to(device=input_device(model), dtype=next(model.parameters()).dtype)


def _rows(num_layers: int, multipliers: Sequence[float]) -> tuple[Tensor, Tensor]:
    """The (layer, multiplier) rows of one example: ``beta [R, L]`` and ``index [L, M]`` (row of
    each pair); multiplier 0 is one shared row."""
    betas: list[Tensor] = []
    index = torch.empty(num_layers, len(multipliers), dtype=torch.long)
    zero_row: int | None = None
    for j, lam in enumerate(multipliers):
        for i in range(num_layers):
            if lam == 0.0:
                if zero_row is None:
                    zero_row = len(betas)
                    betas.append(torch.zeros(num_layers))
                index[i, j] = zero_row
                continue
            row = torch.zeros(num_layers)
            row[i] = lam
            index[i, j] = len(betas)
            betas.append(row)
    return torch.stack(betas), index


class PackedLayerSteer:
    """The sweep's edit when the rows are packed as parallel tokens of one sequence.

    Token ``r`` of the packed call adds ``lambda_r * v[layer_r]`` to ``resid_post`` of its layer
    only; calls of another length (the prompt prefix) pass through unchanged.
    """

    def __init__(self, vectors: Tensor, layers: Sequence[int], beta: Tensor) -> None:
        self.layers = list(layers)
        self.vectors = vectors  # [len(layers), d]
        self.beta = beta  # [R, len(layers)]

    def points(self) -> list[tuple[int, str]]:
        return [(layer, "resid_post") for layer in self.layers]

    def prepare(self, ctx: Any, beta: Tensor) -> None:
        return None

    def apply(self, layer: int, site: str, h: Tensor, state: Any) -> Tensor:
        if h.shape[1] != self.beta.shape[0]:
            return h
        i = self.layers.index(layer)
        w = self.beta[:, i].to(h.dtype)  # [R]
        return h + w[None, :, None] * self.vectors[i].to(h.dtype)


def _prefix_cache(model: nn.Module, ids: Tensor):
    """The KV cache of ``ids[:-1]`` (one prompt, 1-D ids); its logits are not needed, so one
    column is projected to the vocabulary."""
    prefix = ids[None, :-1]
    return output_cache(
        model(input_ids=prefix, use_cache=True, logits_to_keep=keep_last_column(prefix))
    )


def _sweep_logits_packed(model: nn.Module, ids: Tensor, vectors, layers, beta) -> Tensor:
    """``[R, vocab]``: the last token repeated R times as parallel tokens of one sequence, each
    seeing the shared prefix cache and itself (a 4-d attention mask), at the same position."""
    rows, n = beta.shape[0], ids.numel()
    device = ids.device
    cache = _prefix_cache(model, ids) if n > 1 else None
    allowed = torch.zeros(1, 1, rows, n - 1 + rows, dtype=torch.bool, device=device)
    allowed[..., : n - 1] = True
    allowed[0, 0, torch.arange(rows), n - 1 + torch.arange(rows)] = True
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)  # additive: 0 or -inf
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    edit = PackedLayerSteer(vectors, layers, beta)
    with attach(model, edit):
        return model(
            input_ids=ids[-1:].expand(rows)[None],
            attention_mask=mask,
            position_ids=torch.full((1, rows), n - 1, device=device),
            **with_cache(model, cache),
        ).logits[0]


def _sweep_logits_rows(model: nn.Module, ids: Tensor, vectors, layers, beta) -> Tensor:
    """``[R, vocab]``: the prefix cache repeated for R batch rows, each steering its own layer
    (a ``[rows, layers]`` beta)."""
    rows, n = beta.shape[0], ids.numel()
    edit = _steering_edit(model, vectors, layers)
    cache = None
    if n > 1:
        cache = _prefix_cache(model, ids)
        cache.batch_repeat_interleave(rows)
    mask = torch.ones(rows, n, dtype=torch.long, device=ids.device)
    with attach(model, edit, beta):
        return model(
            input_ids=ids[None, -1:].expand(rows, 1),
            attention_mask=mask,
            position_ids=torch.full((rows, 1), n - 1, device=ids.device),
            **with_cache(model, cache),
            logits_to_keep=1,
        ).logits[:, -1]


@torch.no_grad()
def sweep_example(
    model: nn.Module,
    example: SweepExample,
    vectors: Tensor,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    packed: bool = True,
) -> Tensor:
    """``[L, M]`` propensity of one example steered at each layer with each multiplier.

    The prompt prefix (all but its last token) runs once and only the last token is re-run for
    the ``L x (M-1) + 1`` (layer, multiplier) rows, each adding ``lambda * v[l]`` at its own
    layer.  ``packed=True`` puts the rows side by side as tokens of one sequence that all see the
    prefix cache and themselves only (a 4-d attention mask, same position id), so the cache is
    never copied; ``packed=False`` repeats the cache for a batch of rows (a ``[rows, layers]``
    beta), for attention implementations without 4-d masks.  Both equal the naive re-run.
    Propensity = log p(positive) - log p(negative) of the next token.

    Args:
        vectors: ``[len(layers), d]`` the steering vector of each swept layer.
    """
    layers = list(range(model_dims(model).num_layers)) if layers is None else list(layers)
    beta, index = _rows(len(layers), multipliers)
    device, dtype = input_device(model), next(model.parameters()).dtype
    beta = beta.to(device=device, dtype=dtype)
    ids = example.prompt_ids.to(device)
    vectors = vectors.to(device=device, dtype=dtype)
    run = _sweep_logits_packed if packed else _sweep_logits_rows
    logits = run(model, ids, vectors, layers, beta)
    logp = torch.log_softmax(logits.float(), -1)
    prop = logp[:, example.positive_id] - logp[:, example.negative_id]  # [R]
    return prop[index].cpu()


@torch.no_grad()
def sweep_example_naive(
    model: nn.Module,
    example: SweepExample,
    vectors: Tensor,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
) -> Tensor:
    """Reference for :func:`sweep_example`: the whole prompt re-run for every (layer, multiplier),
    steering one layer with a float beta.  Same ``[L, M]`` result, many times slower."""
    layers = list(range(model_dims(model).num_layers)) if layers is None else list(layers)
    ids = example.prompt_ids.to(input_device(model))[None]
    out = torch.empty(len(layers), len(multipliers))
    for i, layer in enumerate(layers):
        edit = _steering_edit(model, vectors[i : i + 1], [layer])
        for j, lam in enumerate(multipliers):
            with attach(model, edit, float(lam)):
                logits = model(input_ids=ids).logits[0, -1]
            logp = torch.log_softmax(logits.float(), -1)
            out[i, j] = logp[example.positive_id] - logp[example.negative_id]
    return out


# ----------------------------------------------------------------------------- cache
def fingerprint(*tensors: Tensor) -> str:
    """sha256 (first 16 hex digits) of the tensors' values and shapes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def examples_fingerprint(examples: Sequence[SweepExample]) -> str:
    """Fingerprint of the tokenized prompts and answers."""
    if not examples:
        return "empty"
    ids = torch.cat([ex.prompt_ids for ex in examples])
    lengths = torch.tensor([ex.prompt_ids.numel() for ex in examples])
    answers = torch.tensor([[ex.positive_id, ex.negative_id] for ex in examples])
    return fingerprint(ids, lengths, answers)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "sweep"


@dataclass
class SweepCache:
    """A folder of sweep chunks for one configuration.

    ``config`` must hold everything the result depends on; the folder name ends in its hash, and
    ``meta.json`` inside repeats it.  Opening a folder whose ``meta.json`` holds another
    configuration (a hash collision, or a folder passed by hand) discards the old chunks with a
    warning: they are recomputed, never silently reused.
    """

    folder: Path
    config: dict[str, Any]
    num_examples: int
    chunk_size: int = 16
    _checked: bool = field(default=False, repr=False)

    @classmethod
    def for_config(
        cls,
        config: dict[str, Any],
        num_examples: int,
        name: str = "sweep",
        root: str | Path | None = None,
        chunk_size: int = 16,
    ) -> SweepCache:
        """The cache folder of ``config`` under ``root`` (default: the project cache folder)."""
        root = Path(root) if root is not None else cache_root() / "sweeps"
        key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        return cls(root / f"{_slug(name)}-{key}", config, num_examples, chunk_size)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_examples // self.chunk_size)

    def chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:05d}.safetensors"

    def _meta(self) -> dict[str, Any]:
        return dict(
            format="learned-interventions-sweep",
            format_version=SWEEP_FORMAT,
            config=self.config,
            num_examples=self.num_examples,
            chunk_size=self.chunk_size,
        )

    def open(self) -> None:
        """Create the folder, or check that an existing one holds this configuration."""
        if self._checked:
            return
        meta_path = self.folder / "meta.json"
        expected = json.loads(json.dumps(self._meta()))
        if meta_path.exists():
            try:
                found = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                found = None
            if found != expected:
                rank_zero_warn(
                    f"The sweep cache {self.folder} was written by another configuration; "
                    "recomputing it (the old chunks are removed)."
                )
                shutil.rmtree(self.folder)
        if not meta_path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(expected, indent=2, sort_keys=True))
            os.replace(tmp, meta_path)
        self._checked = True

    def load_chunk(self, i: int, expected_rows: int) -> Tensor | None:
        """The chunk's propensity tensor, or ``None`` if missing or unreadable."""
        path = self.chunk_path(i)
        if not path.exists():
            return None
        try:
            t = load_file(str(path))["propensity"]
        except (SafetensorError, OSError, KeyError):
            rank_zero_warn(f"Sweep chunk {path} is unreadable; recomputing it.")
            return None
        if t.shape[0] != expected_rows:
            return None
        return t

    def save_chunk(self, i: int, propensity: Tensor) -> None:
        """Write one chunk atomically (temporary file, then rename)."""
        path = self.chunk_path(i)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"propensity": propensity.contiguous()}, str(tmp))
        os.replace(tmp, path)


@dataclass
class SweepResult:
    """Propensity ``[N, L, M]`` of N examples steered at L layers with M multipliers."""

    propensity: Tensor
    multipliers: list[float]
    layers: list[int]

    @property
    def steerability(self) -> Tensor:
        """``[N, L]`` per-example steerability (least-squares slope over the multipliers)."""
        return steerability_slopes(self.propensity, torch.tensor(self.multipliers))

    @property
    def swept_layers(self) -> list[int]:
        """Layers that were swept (the others hold NaN)."""
        if self.propensity.shape[0] == 0:
            return list(self.layers)
        return [ly for ly in self.layers if not bool(self.propensity[0, ly].isnan().any())]

    @property
    def unsteered(self) -> Tensor:
        """``[N]`` propensity without steering (multiplier 0), if 0 is among the multipliers."""
        layer = self.swept_layers[0]
        return self.propensity[:, layer, self.multipliers.index(0.0)]


def run_sweep(
    model: nn.Module,
    examples: Sequence[SweepExample],
    vectors: Tensor,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    cache: SweepCache | None = None,
    desc: str = "layer sweep",
    progress: bool = True,
    layers: Sequence[int] | None = None,
) -> SweepResult:
    """Sweep every example over all layers and multipliers (resuming from ``cache``).

    Args:
        model: the backbone.
        examples: tokenized examples.
        vectors: ``[L, d]`` one steering vector per layer for all examples (CAA), or
            ``[N, L, d]`` one per example and layer (L2S).
        multipliers: the steering multipliers.
        cache: where chunks are read from and written to (``None``: no caching).
        desc: progress bar label.
        progress: show a tqdm progress bar.
        layers: sweep only these layers (default: all); the others are NaN in the result.
    """
    dims = model_dims(model)
    all_layers = list(range(dims.num_layers))
    layers = all_layers if layers is None else sorted(set(layers))
    for layer in layers:
        if not 0 <= layer < dims.num_layers:
            raise ValueError(f"Layer {layer} is out of range for a {dims.num_layers}-layer model.")
    mult = [float(m) for m in multipliers]
    if len(set(mult)) < 2:
        raise ValueError(f"The sweep needs at least two distinct multipliers, got {mult}.")
    if vectors.dim() not in (2, 3) or vectors.shape[-2:] != (dims.num_layers, dims.d_model):
        raise ValueError(
            f"vectors must be [layers={dims.num_layers}, d_model={dims.d_model}] or "
            f"[examples, {dims.num_layers}, {dims.d_model}], got {list(vectors.shape)}."
        )
    if vectors.dim() == 3 and vectors.shape[0] != len(examples):
        raise ValueError(
            f"Per-example vectors for {vectors.shape[0]} examples but {len(examples)} examples."
        )
    n = len(examples)
    chunk = cache.chunk_size if cache is not None else 16
    num_chunks = -(-n // chunk)
    parts: list[Tensor | None] = [None] * num_chunks
    if cache is not None:
        if is_distributed() and rank_and_world()[0] != 0:
            barrier()  # rank 0 checks (or resets) the cache folder first
        cache.open()
        if is_distributed() and rank_and_world()[0] == 0:
            barrier()
        for c in range(num_chunks):
            parts[c] = cache.load_chunk(c, min(chunk, n - c * chunk))
        done = sum(p is not None for p in parts)
        if done:
            rank_zero_info(f"{desc}: {done} of {num_chunks} chunks reused from {cache.folder}")
    # Several processes: every rank read the same chunks, then computes its share of the missing
    # ones (writing their cache files) and all ranks exchange them.
    missing = broadcast_object([c for c in range(num_chunks) if parts[c] is None])
    mine = [missing[i] for i in shard_range(len(missing))]
    todo = sum(min(chunk, n - c * chunk) for c in mine)
    bar = tqdm(total=todo, desc=desc, disable=not progress or todo == 0, leave=False)
    for c in mine:
        rows = []
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            v = vectors[i] if vectors.dim() == 3 else vectors
            rows.append(sweep_example(model, examples[i], v[layers], mult, layers))
            bar.update(1)
        parts[c] = torch.stack(rows)
        if cache is not None:
            cache.save_chunk(c, parts[c])
    bar.close()
    if is_distributed():
        for c, part in zip(missing, gather_shards([parts[c] for c in mine], len(missing))):
            parts[c] = part
    swept = torch.cat(parts) if parts else torch.empty(0, len(layers), len(mult))
    prop = torch.full((n, len(all_layers), len(mult)), float("nan"))
    prop[:, layers] = swept
    return SweepResult(prop, mult, all_layers)


def cached_sweep(
    model: nn.Module,
    examples: Sequence[SweepExample],
    vectors: Tensor,
    multipliers: Sequence[float],
    backbone: str,
    tags: dict[str, Any],
    layers: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    chunk_size: int = 16,
    use_cache: bool = True,
    progress: bool = True,
) -> SweepResult:
    """:func:`run_sweep` with its disk cache keyed by everything the result depends on.

    Args:
        model: the backbone.
        examples: tokenized examples.
        vectors: ``[L, d]`` or ``[N, L, d]`` steering vectors.
        multipliers: steering multipliers.
        backbone: the name the backbone was loaded by.
        tags: readable description of the data and method (e.g. behaviour, variant, split,
            steering method); part of the key and of the folder name.
        layers: layers to sweep (default: all).
        cache_dir: cache root (default ``$XDG_CACHE_HOME/learned-interventions/sweeps``).
        chunk_size: examples per chunk file.
        use_cache: ``False`` computes without reading or writing the cache.
        progress: show a progress bar.
    """
    param = next(model.parameters())
    dims = model_dims(model)
    config = dict(
        backbone=backbone,
        dims=[dims.architecture, dims.num_layers, dims.d_model],
        dtype=str(param.dtype),
        tags={k: tags[k] for k in sorted(tags)},
        multipliers=[float(m) for m in multipliers],
        layers=None if layers is None else sorted(set(int(layer) for layer in layers)),
        site="resid_post",
        position="answer",
        examples=examples_fingerprint(examples),
        vectors=fingerprint(vectors.float()),
    )
    cache = None
    if use_cache:
        name = "-".join(str(v) for v in config["tags"].values())
        cache = SweepCache.for_config(config, len(examples), name, cache_dir, chunk_size)
    desc = "sweep " + " ".join(str(v) for v in config["tags"].values())
    return run_sweep(model, examples, vectors, multipliers, cache, desc, progress, layers)
