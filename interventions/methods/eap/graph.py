"""The EAP-IG attribution graph: :class:`AttributionGraph` (nodes, inputs, edge scores; merge,
top edges, save / load as safetensors) and the graph layout (which node writes before which
input reads).  The algorithm that fills it is :func:`interventions.methods.eap.eap_ig.eap_ig`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT_VERSION = 1
"""Version of the graph file format."""


# --------------------------------------------------------------------------------------------
# The attribution graph
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One scored edge: ``upstream`` writes, ``input`` reads."""

    upstream: str
    input: str
    score: float


@dataclass
class AttributionGraph:
    """An EAP-IG attribution graph for a batch of clean/corrupted prompt pairs.

    Rows of the score matrices are the upstream nodes ``nodes[:-1]`` (every node but the logits),
    columns are the inputs ``inputs``; pairs that are not edges hold NaN.

    Attributes:
        nodes: every node in forward order: ``"input"``, ``"a{l}.h{h}"``, ``"m{l}"``, ...,
            ``"logits"``.
        node_layers: layer of each node: -1 for the input, ``num_layers`` for the logits.
        inputs: every input (column) name (see the module docstring).
        input_nodes: the nodes reading through each input (several when the input is shared:
            a block-level attention input by all heads of the layer, a GQA key/value input by
            the query heads of its group).
        scores: ``[num_nodes - 1, num_inputs]`` edge scores averaged over the examples.
        example_scores: ``[batch, num_nodes - 1, num_inputs]`` per-example edge scores.
        metric_clean: ``[batch]`` L (logit difference) on the clean prompts.
        metric_corrupted: ``[batch]`` L on the corrupted prompts.
        steps: number of integration steps ``m``.
        architecture: ``config.model_type`` of the model.
        per_head_inputs: whether heads read through per-head q/k/v inputs.
    """

    nodes: list[str]
    node_layers: list[int]
    inputs: list[str]
    input_nodes: list[list[str]]
    scores: Tensor
    example_scores: Tensor
    metric_clean: Tensor
    metric_corrupted: Tensor
    steps: int
    architecture: str
    per_head_inputs: bool

    @property
    def upstream(self) -> list[str]:
        """Row names: every node that writes to the residual stream (all but the logits)."""
        return self.nodes[:-1]

    @property
    def num_examples(self) -> int:
        return int(self.metric_clean.numel())

    @property
    def edge_mask(self) -> Tensor:
        """``[num_nodes - 1, num_inputs]`` true where ``u -> v`` is an edge of the graph."""
        return ~torch.isnan(self.scores)

    def edges(self, sort: bool = True) -> list[Edge]:
        """Every edge with its (batch-mean) score; sorted by ``|score|``, largest first."""
        rows, cols = torch.nonzero(self.edge_mask, as_tuple=True)
        values = self.scores[rows, cols].tolist()
        out = [
            Edge(self.nodes[r], self.inputs[c], v)
            for r, c, v in zip(rows.tolist(), cols.tolist(), values)
        ]
        if sort:
            out.sort(key=lambda e: abs(e.score), reverse=True)
        return out

    def score(self, upstream: str, input: str) -> float:
        """The batch-mean score of ``upstream -> input`` (NaN if it is not an edge)."""
        return float(self.scores[self.upstream.index(upstream), self.inputs.index(input)])

    def _abs_scores(self, per_example: bool) -> Tensor:
        # [num_nodes - 1, num_inputs], 0 where there is no edge
        s = self.example_scores.abs().mean(0) if per_example else self.scores.abs()
        return torch.nan_to_num(s, nan=0.0)

    def out_scores(self, per_example: bool = False) -> Tensor:
        """``[num_nodes]`` Out(v) = sum of |score| over the edges leaving v (A2A Eq. 2).

        Args:
            per_example: if true, use the mean over examples of |score| (A2A's Algorithm 1
                accumulates |Attr| example by example); otherwise |batch-mean score|.
        """
        out = torch.zeros(len(self.nodes), dtype=self.scores.dtype, device=self.scores.device)
        out[:-1] = self._abs_scores(per_example).sum(1)
        return out

    def in_scores(self, per_example: bool = False) -> Tensor:
        """``[num_nodes]`` In(v) = sum of |score| over the edges entering v (A2A Eq. 2).

        An input shared by several nodes (see ``input_nodes``) splits its edges' |score| equally
        among them, so layer totals are the same whatever the input granularity.
        """
        per_input = self._abs_scores(per_example).sum(0)  # [num_inputs]
        index = {name: i for i, name in enumerate(self.nodes)}
        share = torch.zeros(len(self.inputs), len(self.nodes), dtype=per_input.dtype)
        for i, readers in enumerate(self.input_nodes):
            for name in readers:
                share[i, index[name]] = 1.0 / len(readers)
        return per_input @ share.to(per_input.device)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> AttributionGraph:
        """A copy with every tensor moved to ``device`` / cast to ``dtype``."""
        move = {
            name: getattr(self, name).to(device=device, dtype=dtype)
            for name in ("scores", "example_scores", "metric_clean", "metric_corrupted")
        }
        return replace(self, **move)

    def save(self, path: str | Path) -> None:
        """Write the graph to one ``.safetensors`` file (names and settings in its metadata)."""
        meta = {
            "nodes": self.nodes,
            "node_layers": self.node_layers,
            "inputs": self.inputs,
            "input_nodes": self.input_nodes,
            "steps": self.steps,
            "architecture": self.architecture,
            "per_head_inputs": self.per_head_inputs,
        }
        tensors = {
            "scores": self.scores,
            "example_scores": self.example_scores,
            "metric_clean": self.metric_clean,
            "metric_corrupted": self.metric_corrupted,
        }
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(path),
            metadata={
                "kind": "attribution_graph",
                "format_version": str(FORMAT_VERSION),
                "graph": json.dumps(meta),
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        """Read a graph written by :meth:`save` (unknown metadata keys are ignored)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("kind") != "attribution_graph":
            raise ValueError(
                f"{path} is not an attribution graph (metadata kind = {metadata.get('kind')!r}); "
                "write graphs with AttributionGraph.save."
            )
        meta = json.loads(metadata["graph"])
        tensors = load_file(str(path))
        return cls(
            nodes=list(meta["nodes"]),
            node_layers=[int(x) for x in meta["node_layers"]],
            inputs=list(meta["inputs"]),
            input_nodes=[list(x) for x in meta["input_nodes"]],
            scores=tensors["scores"],
            example_scores=tensors["example_scores"],
            metric_clean=tensors["metric_clean"],
            metric_corrupted=tensors["metric_corrupted"],
            steps=int(meta["steps"]),
            architecture=str(meta["architecture"]),
            per_head_inputs=bool(meta["per_head_inputs"]),
        )

    @classmethod
    def merge(cls, graphs: Sequence[AttributionGraph]) -> AttributionGraph:
        """One graph for the union of the examples of ``graphs`` (e.g. the batches of a dataset)."""
        if not graphs:
            raise ValueError("merge needs at least one graph.")
        first = graphs[0]
        for g in graphs[1:]:
            same = (g.nodes, g.inputs, g.steps, g.architecture) == (
                first.nodes,
                first.inputs,
                first.steps,
                first.architecture,
            )
            if not same:
                raise ValueError(
                    "merge: the graphs differ in nodes, inputs, steps or architecture; build "
                    "them with the same model, per_head_inputs and steps."
                )
        example_scores = torch.cat([g.example_scores for g in graphs])
        return replace(
            first,
            scores=example_scores.mean(0),
            example_scores=example_scores,
            metric_clean=torch.cat([g.metric_clean for g in graphs]),
            metric_corrupted=torch.cat([g.metric_corrupted for g in graphs]),
        )


# --------------------------------------------------------------------------------------------
# Graph layout: names, layers and read/write stages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    nodes: list[str]
    node_layers: list[int]
    write_stage: list[int]  # per upstream node (nodes[:-1])
    inputs: list[str]
    input_nodes: list[list[str]]
    read_stage: list[int]  # per input

    def edge_mask(self) -> Tensor:
        """``[num_upstream, num_inputs]`` true where the upstream node writes before v reads."""
        w = torch.tensor(self.write_stage)[:, None]
        r = torch.tensor(self.read_stage)[None, :]
        return w < r


def graph_layout(
    num_layers: int, num_heads: int, num_kv: int, parallel: bool, per_head: bool
) -> Layout:
    # Stages: the embedding writes at 0; the attention of layer l reads and writes at 2l+1, its
    # MLP at 2l+2 (2l+1 with a parallel residual); the logits read at 2L+1.
    nodes, node_layers, write = ["input"], [-1], [0]
    inputs: list[str] = []
    input_nodes: list[list[str]] = []
    read: list[int] = []
    group = num_heads // num_kv
    for layer in range(num_layers):
        attn_stage, mlp_stage = 2 * layer + 1, 2 * layer + (1 if parallel else 2)
        heads = [f"a{layer}.h{h}" for h in range(num_heads)]
        nodes += heads + [f"m{layer}"]
        node_layers += [layer] * (num_heads + 1)
        write += [attn_stage] * num_heads + [mlp_stage]
        if per_head:
            kv_name = "h" if num_kv == num_heads else "kv"
            attn_inputs = [(f"{h}<q>", [h]) for h in heads]
            for kind in ("k", "v"):
                attn_inputs += [
                    (f"a{layer}.{kv_name}{g}<{kind}>", heads[g * group : (g + 1) * group])
                    for g in range(num_kv)
                ]
        else:
            attn_inputs = [(f"a{layer}", heads)]
        for name, readers in attn_inputs:
            inputs.append(name)
            input_nodes.append(readers)
            read.append(attn_stage)
        inputs.append(f"m{layer}")
        input_nodes.append([f"m{layer}"])
        read.append(mlp_stage)
    nodes.append("logits")
    node_layers.append(num_layers)
    inputs.append("logits")
    input_nodes.append(["logits"])
    read.append(2 * num_layers + 1)
    return Layout(nodes, node_layers, write, inputs, input_nodes, read)
