"""Learn to Steer (L2S; Parekh et al. 2025): input-dependent steering vectors.

The *oracle* steering vector of an example at layer ``l`` is the difference of ``resid_post`` at
the answer token between the prompt completed with the behaviour-matching letter and with the
other one (the per-example term whose mean is the CAA vector).  L2S learns, per steering layer, a
small auxiliary network (2-layer MLP, hidden 100, tanh) that maps the prompt's last-token
representation at a *context layer* to that oracle vector, with a mean-squared error.  At test
time the example is steered with the predicted vector.

Following the W2S paper (§6.1): the fixed steering layer is the one with the best mean
steerability using the oracle vectors on the training split; the context layer is then chosen,
among candidates, by the validation MSE of the network for that fixed layer; for every learning
rate in a small grid the networks are trained and, per steering layer, the best on validation is
kept.

The networks of all steering layers are trained together as one batched model
(:class:`L2SNets`, weights ``[K, ...]``): their parameters are disjoint and Adam is elementwise,
so minimising the sum of the per-layer losses trains each network exactly as alone, in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class L2SNets(nn.Module):
    """``K`` independent ``d_in -> hidden (tanh) -> d_out`` MLPs evaluated as one batch.

    ``forward(x) -> [N, K, d_out]``: with ``x [N, d_in]`` every network reads the same context
    representation (one network per steering layer); with ``x [K, N, d_in]`` network ``k`` reads
    ``x[k]`` (one network per candidate context layer).
    """

    def __init__(self, num: int, d_in: int, d_out: int, hidden: int = 100) -> None:
        super().__init__()
        bound_in, bound_hidden = 1 / math.sqrt(d_in), 1 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(num, d_in, hidden).uniform_(-bound_in, bound_in))
        self.b1 = nn.Parameter(torch.empty(num, 1, hidden).uniform_(-bound_in, bound_in))
        self.w2 = nn.Parameter(
            torch.empty(num, hidden, d_out).uniform_(-bound_hidden, bound_hidden)
        )
        self.b2 = nn.Parameter(torch.empty(num, 1, d_out).uniform_(-bound_hidden, bound_hidden))

    def forward(self, x: Tensor) -> Tensor:
        x = x[None] if x.dim() == 2 else x
        h = torch.tanh(torch.matmul(x, self.w1) + self.b1)  # [K, N, hidden]
        return (torch.matmul(h, self.w2) + self.b2).transpose(0, 1)  # [N, K, d_out]

    def select(self, index: Tensor) -> L2SNets:
        """A copy holding networks ``index`` (``[K']`` indices) only."""
        out = L2SNets.__new__(L2SNets)
        nn.Module.__init__(out)
        for name in ("w1", "b1", "w2", "b2"):
            setattr(out, name, nn.Parameter(getattr(self, name).detach()[index].clone()))
        return out


def train_nets(nets: L2SNets, x: Tensor, y: Tensor, lr: float, steps: int) -> L2SNets:
    """Full-batch Adam on the sum over networks of each one's MSE (``y [N, K, d]``); the
    networks' gradients are independent, so each trains as it would alone."""
    opt = torch.optim.Adam(nets.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((nets(x) - y) ** 2).mean(dim=(0, 2)).sum()
        loss.backward()
        opt.step()
    return nets


@dataclass
class FittedL2S:
    """Trained networks for ``K`` steering layers, with input standardisation and scores."""

    nets: L2SNets
    x_mean: Tensor
    x_std: Tensor
    val_mse: Tensor  # [K] validation MSE of each network
    lr: Tensor  # [K] learning rate each network was trained with

    @torch.no_grad()
    def predict(self, context: Tensor) -> Tensor:
        """``[N, K, d]`` predicted steering vectors from ``[N, d_in]`` (or ``[K, N, d_in]``)
        context representations."""
        return self.nets((context - self.x_mean) / self.x_std)


def fit_l2s(
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    lrs: Sequence[float] = (1e-3, 1e-2),
    steps: int = 300,
    hidden: int = 100,
    seed: int = 0,
) -> FittedL2S:
    """Train one network per target (full-batch Adam, MSE) for every learning rate and keep,
    per target, the one with the lowest validation MSE.

    Args:
        x_train: ``[N, d_in]`` context representations, or ``[K, N, d_in]`` one per network.
        y_train: ``[N, d]`` or ``[N, K, d]`` oracle vectors (K steering layers).
        x_val: ``[V, d_in]`` or ``[K, V, d_in]``.
        y_val: ``[V, d]`` or ``[V, K, d]``; with no validation examples the training MSE decides.
        lrs: learning-rate grid.
        steps: Adam steps.
        hidden: hidden size.
        seed: initialisation seed (the same for every learning rate).
    """
    if x_train.shape[-2] == 0:
        raise ValueError("L2S needs at least one training example.")
    if y_train.dim() == 2:
        y_train, y_val = y_train[:, None], y_val[:, None]
    x_mean = x_train.mean(-2, keepdim=True)
    x_std = x_train.std(-2, unbiased=False, keepdim=True).clamp(min=1e-6)
    xt = (x_train - x_mean) / x_std
    xv = (x_val - x_mean) / x_std
    num, d_out = y_train.shape[1], y_train.shape[2]
    best: FittedL2S | None = None
    for lr in lrs:
        torch.manual_seed(seed)
        nets = train_nets(L2SNets(num, x_train.shape[-1], d_out, hidden), xt, y_train, lr, steps)
        with torch.no_grad():
            if x_val.shape[-2]:
                score = ((nets(xv) - y_val) ** 2).mean(dim=(0, 2))  # [K]
            else:
                score = ((nets(xt) - y_train) ** 2).mean(dim=(0, 2))
        fitted = FittedL2S(nets, x_mean, x_std, score, torch.full((num,), lr))
        if best is None:
            best = fitted
            continue
        better = score < best.val_mse  # per network
        for name in ("w1", "b1", "w2", "b2"):
            merged = torch.where(
                better[:, None, None], getattr(nets, name).detach(), getattr(best.nets, name)
            )
            setattr(best.nets, name, nn.Parameter(merged))
        best.val_mse = torch.where(better, score, best.val_mse)
        best.lr = torch.where(better, fitted.lr, best.lr)
    assert best is not None
    return best


@dataclass
class L2SSteering:
    """Trained L2S networks for every steering layer, all reading ``context_layer``."""

    context_layer: int
    fitted: FittedL2S  # K = every layer
    context_mse: dict[int, float]  # validation MSE at the fixed layer per candidate context layer

    def predict(self, context: Tensor) -> Tensor:
        """``[N, L, d]`` predicted vectors for every steering layer."""
        return self.fitted.predict(context)


def train_l2s(
    train_context: Tensor,
    train_oracle: Tensor,
    val_context: Tensor,
    val_oracle: Tensor,
    context_layers: Sequence[int],
    fixed_layer: int,
    lrs: Sequence[float] = (1e-3, 1e-2),
    steps: int = 300,
    hidden: int = 100,
    seed: int = 0,
) -> L2SSteering:
    """Choose the context layer at ``fixed_layer`` by validation MSE, then fit every layer.

    Args:
        train_context: ``[N, C, d]`` prompt last-token representations at the candidate
            ``context_layers``.
        train_oracle: ``[N, L, d]`` oracle vectors at every layer.
        val_context: ``[V, C, d]``.
        val_oracle: ``[V, L, d]``.
        context_layers: the candidate context layers (the C axis).
        fixed_layer: steering layer at which the context layer is chosen.
        lrs: learning-rate grid (best on validation per network).
        steps: full-batch Adam steps.
        hidden: hidden size.
        seed: initialisation seed.
    """
    if train_context.shape[1] != len(context_layers):
        raise ValueError(
            f"train_context has {train_context.shape[1]} context layers, expected "
            f"{len(context_layers)} ({list(context_layers)})."
        )
    # one network per candidate context layer, all trained together on the fixed layer's vectors
    num = len(context_layers)
    candidates = fit_l2s(
        train_context.transpose(0, 1),  # [C, N, d]
        train_oracle[:, fixed_layer, None].expand(-1, num, -1),  # [N, C, d]
        val_context.transpose(0, 1),
        val_oracle[:, fixed_layer, None].expand(-1, num, -1),
        lrs,
        steps,
        hidden,
        seed,
    )
    mse = {layer: float(candidates.val_mse[c]) for c, layer in enumerate(context_layers)}
    context_layer = min(mse, key=mse.get)
    c = list(context_layers).index(context_layer)
    fitted = fit_l2s(
        train_context[:, c], train_oracle, val_context[:, c], val_oracle, lrs, steps, hidden, seed
    )
    return L2SSteering(context_layer, fitted, mse)
