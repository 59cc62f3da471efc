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
rate in a small grid one network is trained and the best on validation is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class L2SNet(nn.Module):
    """``d_in -> hidden (tanh) -> d_out``: context representation to steering vector."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class FittedL2S:
    """One trained auxiliary network with its input/output standardisation and scores."""

    net: L2SNet
    x_mean: Tensor
    x_std: Tensor
    val_mse: float
    lr: float

    @torch.no_grad()
    def predict(self, context: Tensor) -> Tensor:
        """``[N, d]`` predicted steering vectors from ``[N, d_in]`` context representations."""
        self.net.eval()
        return self.net((context - self.x_mean) / self.x_std)


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
    """Train one network per learning rate (full batch Adam, MSE) and keep the best on validation.

    Inputs are standardised with the training mean/std; with no validation examples the training
    MSE is used for the choice.
    """
    if x_train.shape[0] == 0:
        raise ValueError("L2S needs at least one training example.")
    x_mean = x_train.mean(0)
    x_std = x_train.std(0, unbiased=False).clamp(min=1e-6)
    xt = (x_train - x_mean) / x_std
    xv = (x_val - x_mean) / x_std
    best: FittedL2S | None = None
    for lr in lrs:
        torch.manual_seed(seed)
        net = L2SNet(x_train.shape[1], y_train.shape[1], hidden)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(xt), y_train)
            loss.backward()
            opt.step()
        with torch.no_grad():
            if x_val.shape[0]:
                score = float(nn.functional.mse_loss(net(xv), y_val))
            else:
                score = float(nn.functional.mse_loss(net(xt), y_train))
        if best is None or score < best.val_mse:
            best = FittedL2S(net, x_mean, x_std, score, lr)
    assert best is not None
    return best


@dataclass
class L2SSteering:
    """Trained L2S networks: one per steering layer, all reading ``context_layer``."""

    context_layer: int
    nets: dict[int, FittedL2S]
    context_mse: dict[int, float]  # validation MSE at the fixed layer per candidate context layer

    def predict(self, context: Tensor) -> Tensor:
        """``[N, L, d]`` predicted vectors for every steering layer (zeros where no network)."""
        layers = max(self.nets) + 1
        some = next(iter(self.nets.values()))
        d = some.net.net[-1].out_features
        out = torch.zeros(context.shape[0], layers, d)
        for layer, fitted in self.nets.items():
            out[:, layer] = fitted.predict(context)
        return out


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
    mse = {}
    for c, layer in enumerate(context_layers):
        fitted = fit_l2s(
            train_context[:, c],
            train_oracle[:, fixed_layer],
            val_context[:, c],
            val_oracle[:, fixed_layer],
            lrs,
            steps,
            hidden,
            seed,
        )
        mse[layer] = fitted.val_mse
    context_layer = min(mse, key=mse.get)
    c = list(context_layers).index(context_layer)
    nets = {
        layer: fit_l2s(
            train_context[:, c],
            train_oracle[:, layer],
            val_context[:, c],
            val_oracle[:, layer],
            lrs,
            steps,
            hidden,
            seed,
        )
        for layer in range(train_oracle.shape[1])
    }
    return L2SSteering(context_layer, nets, mse)
