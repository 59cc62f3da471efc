"""Several processes (Lightning's DDP / ``ddp_spawn``): shard work, combine results.

Every helper is a no-op in a single process, so code written with them runs unchanged in one
process, under ``torch.distributed`` with gloo (CPU) or with NCCL (GPUs).  Under a process group
they are **collective**: every rank must call them in the same order (the end-of-fit work of
every method runs on all ranks for this reason; files are written by global rank zero only).

* :func:`shard_range` / :func:`shard_loader`: this rank's share of a list or a data loader,
  strided (``rank, rank + N, ...``) and **without padding** (Lightning's training sampler repeats
  examples to even out the ranks; sums and counts must see every example exactly once);
* :func:`all_reduce_sum`: sums of every rank, in place, on the device the backend needs (NCCL:
  the current CUDA device; gloo: CPU); :func:`all_reduce_sums` for a ``name -> sum`` dict some
  ranks may not have filled (a rank without batches), :func:`all_reduce_count` for a count;
* :func:`gather_shards` / :func:`gather_rows`: put per-rank results (of :func:`shard_range`
  items, or the rows of a :func:`shard_loader` pass) back in their original order on every rank;
* :func:`barrier`, :func:`broadcast_object`.

Accumulate in float64 where the order of additions differs between one and N processes: the
float32 result is then the same to the last bit in practice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = [
    "all_reduce_count",
    "all_reduce_sum",
    "all_reduce_sums",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "gather_rows",
    "gather_shards",
    "is_distributed",
    "rank_and_world",
    "reduce_device",
    "shard_loader",
    "shard_range",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(global rank, world size)``; ``(0, 1)`` without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def reduce_device() -> torch.device:
    """Where the backend reduces tensors: the current CUDA device for NCCL, else CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(*tensors: Tensor) -> None:
    """Sum each tensor over the ranks, in place (no-op in one process)."""
    if not is_distributed():
        return
    device = reduce_device()
    for t in tensors:
        buf = t.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf)


def all_reduce_sums(store: dict[str, Tensor]) -> dict[str, Tensor]:
    """``name -> running sum`` summed over the ranks (``store`` itself in one process).

    A name this rank lacks (it had no batch) starts from zeros of the shape and dtype the other
    ranks have; the names come out in the order the ranks first hold them (rank 0's first), the
    same on every rank.
    """
    if not is_distributed():
        return store
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for part in gather_objects({k: (tuple(v.shape), v.dtype) for k, v in store.items()}):
        for name, spec in part.items():
            specs.setdefault(name, spec)
    out = {
        name: store[name] if name in store else torch.zeros(shape, dtype=dtype)
        for name, (shape, dtype) in specs.items()
    }
    all_reduce_sum(*out.values())
    return out


def all_reduce_count(count: int) -> int:
    """``count`` summed over the ranks (itself in one process)."""
    if not is_distributed():
        return count
    total = torch.tensor([count], dtype=torch.long)
    all_reduce_sum(total)
    return int(total)


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, _to_cpu(obj))
    return parts


def shard_range(n: int) -> range:
    """The indices ``0..n-1`` this rank handles: ``rank, rank + N, ...`` (all in one process)."""
    rank, world = rank_and_world()
    return range(rank, n, world)


def gather_shards(local: Sequence[T], n: int) -> list[T]:
    """The results of all ranks for ``n`` items sharded with :func:`shard_range`, in the
    original item order, on every rank (``local[j]`` is this rank's result for item
    ``shard_range(n)[j]``)."""
    rank, world = rank_and_world()
    if world == 1:
        return list(local)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, [_to_cpu(x) for x in local])
    out: list[Any] = [None] * n
    for r, part in enumerate(parts):
        for j, i in enumerate(range(r, n, world)):
            out[i] = part[j]
    return out


def gather_rows(local: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-example rows of a :func:`shard_loader` pass (``name -> [rows of this rank, ...]``)
    as the rows of the whole loader, in its order, on every rank: row ``j`` of rank ``r`` is
    item ``r + j * N``.  A rank without rows may pass an empty dict."""
    rank, world = rank_and_world()
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, _to_cpu(local))
    names = list(dict.fromkeys(name for part in parts for name in part))
    out: dict[str, Tensor] = {}
    for name in names:
        pieces = [part.get(name) for part in parts]
        like = next(p for p in pieces if p is not None)
        sizes = [0 if p is None else p.shape[0] for p in pieces]
        full = like.new_empty((sum(sizes), *like.shape[1:]))
        for r, piece in enumerate(pieces):
            if piece is not None:
                full[r::world] = piece
        out[name] = full
    return out


def shard_loader(loader: Iterable[Any]) -> Iterable[Any]:
    """This rank's share of the batches of ``loader`` (the loader itself in one process).

    A map-style :class:`DataLoader` is re-made over this rank's items (``rank, rank + N, ...``,
    unshuffled, unpadded, same batch size and collate function), so :func:`gather_rows` can put
    per-example rows back in order; any other iterable is split by batch (batch ``i`` goes to
    rank ``i mod N``), which is right for sums and counts."""
    if not is_distributed():
        return loader
    rank, world = rank_and_world()
    if (
        isinstance(loader, DataLoader)
        and hasattr(loader.dataset, "__len__")
        and loader.batch_size is not None
    ):
        indices = list(range(rank, len(loader.dataset), world))  # type: ignore[arg-type]
        return DataLoader(
            torch.utils.data.Subset(loader.dataset, indices),
            batch_size=loader.batch_size,
            shuffle=False,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        )
    return (batch for i, batch in enumerate(loader) if i % world == rank)


def _to_cpu(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x
