"""The W2S layer predictor: a shallow MLP from a prompt embedding to a class per label layer."""

from __future__ import annotations

from torch import Tensor, nn


class LayerPredictor(nn.Module):
    """The W2S layer predictor: an MLP from a prompt embedding to logits over the layer classes.

    ``in_dim -> [hidden] * depth -> num_classes`` with ReLU and dropout after every hidden layer;
    ``depth = 0`` is a linear classifier.

    Args:
        in_dim: size of the prompt embedding.
        num_classes: number of layer classes (the pruned label space).
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden: int = 256, depth: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1 or hidden < 1 or depth < 0:
            raise ValueError(
                f"LayerPredictor needs in_dim, num_classes, hidden >= 1 and depth >= 0, got "
                f"in_dim={in_dim}, num_classes={num_classes}, hidden={hidden}, depth={depth}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, embedding: Tensor) -> Tensor:
        """``[B, in_dim]`` embeddings -> ``[B, num_classes]`` logits."""
        return self.net(embedding)
