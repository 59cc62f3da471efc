"""Attribution scores vs a learned ActivScalar (activation scaling Sec. 6.1, Fig. 9).

Trains the ActPatch, AttrPatch and DLA runs of one task when they are missing (``train.py fit``
with ``configs/attribution/<task>.yaml --model.method=<m>``), then compares their ActivScalars
with a learned one (``runs/<task>/activscalar/intervention`` from
``configs/<task>/activscalar.yaml``) on the test split of the same data settings::

    python -m interventions.experiments.attribution_table --task ioi
    python -m interventions.experiments.attribution_table --task ccc --learned runs/ccc/activscalar/latest/intervention

Everything after ``--`` is passed to every ``train.py fit`` and to the data module / backbone the
comparison builds from the config (e.g. ``-- --data.num_test 50``).

For every method: effectiveness (E_0, <= 0, 0 = every test prompt flips both ways) and flip rate
at the method's beta (the searched beta of an attribution run, read from its export's
``extra.beta``; 1 for the learned ActivScalar), and the overlap of its top-k locations with the
learned ActivScalar's: the ``k`` ``(layer, site, position)`` points of largest ``|alpha|`` (only
nonzero values count), ``|intersection| / k``.  Results: ``<out>/table.json``, ``<out>/table.md``
and ``<out>/heatmaps.png`` (ActPatch, AttrPatch, DLA, ActivScalar left to right; rows = sites).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from interventions.cli import build_cli
from interventions.edits import ActivScalar
from interventions.edits.artifact import load_intervention, read_intervention_config
from interventions.experiments.runner import fit_run, parse_args, write_table
from interventions.methods.attribution.beta import evaluate_edit
from interventions.methods.attribution.scalars import edit_values
from interventions.methods.attribution.scores import METHODS, Scores
from interventions.reporting.plots import method_heatmaps
from interventions.reporting.run_folder import resolve_run

LABELS = {"actpatch": "ActPatch", "attrpatch": "AttrPatch", "dla": "DLA"}
LEARNED = "ActivScalar"


def top_locations(values: Scores, layers: list[int], k: int = 20) -> set[tuple[int, str, int]]:
    """The ``k`` ``(layer, site, position)`` points of largest ``|value|`` (nonzero values only;
    ties broken by layer, site order and position)."""
    points = [
        (abs(float(v[i, p])), (layer, site, p))
        for site, v in values.items()
        for i, layer in enumerate(layers)
        for p in range(v.shape[1])
        if float(v[i, p]) != 0.0
    ]
    points.sort(key=lambda t: -t[0])  # stable: equal values keep layer, site, position order
    return {point for _, point in points[:k]}


def top_overlap(a: Scores, b: Scores, layers: list[int], k: int = 20) -> float:
    """``|top_k(a) & top_k(b)| / k`` over ``(layer, site, position)`` points."""
    if set(a) != set(b):
        raise ValueError(f"Cannot compare values on sites {sorted(a)} and {sorted(b)}.")
    return len(top_locations(a, layers, k) & top_locations(b, layers, k)) / k


def overlap_matrix(values: dict[str, Scores], layers: list[int], k: int = 20) -> dict[str, dict]:
    """``name -> name -> top-k overlap`` between every pair of methods."""
    tops = {name: top_locations(v, layers, k) for name, v in values.items()}
    return {a: {b: len(tops[a] & tops[b]) / k for b in tops} for a in tops}


def _load(folder: Path, name: str) -> tuple[ActivScalar, float]:
    edit = load_intervention(folder)
    if not isinstance(edit, ActivScalar) or edit.positions != "all":
        raise ValueError(
            f"{name} at {folder} is a {type(edit).__name__} with positions={edit.positions!r}; "
            "the comparison needs ActivScalars with positions='all'."
        )
    extra = read_intervention_config(folder).get("extra") or {}
    return edit, float(extra.get("beta", 1.0))


def compare(
    model: torch.nn.Module,
    dm: Any,
    edits: dict[str, tuple[ActivScalar, float]],
    reference: str = LEARNED,
    top_k: int = 20,
) -> dict[str, dict[str, Any]]:
    """Test metrics of every edit at its beta and its top-k overlap with ``reference``.

    Args:
        model: the backbone.
        dm: the data module (its test split is evaluated).
        edits: name -> (ActivScalar, beta); all on the same sites, layers and positions.
        reference: the name whose top-k locations the others are compared with.
        top_k: number of top locations.
    """
    if reference not in edits:
        raise ValueError(f"No {reference!r} among the edits {sorted(edits)}.")
    ref_edit = edits[reference][0]
    ref_values = edit_values(ref_edit)
    rows: dict[str, dict[str, Any]] = {}
    for name, (edit, beta) in edits.items():
        if edit.sites != ref_edit.sites or edit.layers != ref_edit.layers:
            raise ValueError(
                f"{name} is on sites {edit.sites}, layers {edit.layers}; {reference} on "
                f"{ref_edit.sites}, {ref_edit.layers}. Train them on the same points."
            )
        if edit.num_positions != ref_edit.num_positions:
            raise ValueError(
                f"{name} has {edit.num_positions} positions, {reference} "
                f"{ref_edit.num_positions}: use the same data settings (fixed_length prompts)."
            )
        metrics = evaluate_edit(model, edit, dm.test_dataloader(), beta)
        rows[name] = {
            "beta": beta,
            "effectiveness": metrics["effectiveness"],
            "flip_rate": metrics["flip_rate"],
            "faithfulness": metrics["faithfulness"],
            "logit_diff_pos": metrics["logit_diff_pos"],
            "logit_diff_neg": metrics["logit_diff_neg"],
            "logit_diff_clean": metrics["logit_diff_clean"],
            f"top{top_k}_overlap": top_overlap(edit_values(edit), ref_values, edit.layers, top_k),
        }
    return rows


def markdown(rows: dict[str, dict[str, Any]], top_k: int = 20) -> str:
    """The comparison as a Markdown table."""
    lines = [
        f"| method | beta | effectiveness | flip rate | faithfulness | top-{top_k} overlap |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['beta']:g} | {r['effectiveness']:.3f} | {r['flip_rate']:.3f} | "
            f"{r['faithfulness']:.3f} | {r[f'top{top_k}_overlap']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train missing attribution runs, compare with the learned ActivScalar, write the table."""
    parser = argparse.ArgumentParser(
        description="ActPatch / AttrPatch / DLA as activation scalars vs a learned ActivScalar.",
        epilog="Arguments after -- are passed to train.py fit and to the comparison's config.",
    )
    parser.add_argument("--task", default="ioi", help="task name (ioi, ccc)")
    parser.add_argument("--learned", default=None, help="learned ActivScalar export folder")
    parser.add_argument("--config", default=None, help="attribution config")
    parser.add_argument("--runs", default=None, help="folder of the <method> runs")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--top_k", type=int, default=20)
    args, extra = parse_args(parser, argv)
    config = Path(args.config or f"configs/attribution/{args.task}.yaml")
    runs = Path(args.runs or f"runs/attribution/{args.task}")
    out = Path(args.out or runs / "comparison")
    learned = Path(args.learned or resolve_run(f"runs/{args.task}/activscalar") / "intervention")
    if not (learned / "intervention.json").is_file():
        raise FileNotFoundError(
            f"No learned ActivScalar at {learned}. Train it first: python train.py fit "
            f"--config configs/{args.task}/activscalar.yaml (or pass --learned <folder>)."
        )
    for method in args.methods:
        fit_run(["--config", str(config), f"--model.method={method}", *extra], runs / method)

    cli = build_cli(
        [
            "--config", str(config), *extra,
            "--trainer.logger=false", f"--trainer.default_root_dir={out}",
        ],
        run=False,
    )  # fmt: skip
    model, dm = cli.model.model, cli.datamodule
    edits = {
        LABELS[m]: _load(resolve_run(runs / m) / "intervention", LABELS[m]) for m in args.methods
    }
    edits[LEARNED] = _load(learned, LEARNED)
    rows = compare(model, dm, edits, LEARNED, args.top_k)

    tokenizer = cli.model.tokenizer
    tokens = [tokenizer.decode([i]) for i in tokenizer(dm.example_prompt)["input_ids"]]
    values: dict[str, Scores] = {name: edit_values(e) for name, (e, _) in edits.items()}
    out.mkdir(parents=True, exist_ok=True)
    fig = method_heatmaps(
        values,
        tokens,
        edits[LEARNED][0].layers,
        title=f"{args.task}: attribution scores as activation scalars vs learned ActivScalar",
        path=out / "heatmaps.png",
    )
    plt.close(fig)
    overlaps = overlap_matrix(values, edits[LEARNED][0].layers, args.top_k)
    result = {"methods": rows, f"top{args.top_k}_overlap_matrix": overlaps}
    names = list(overlaps)
    text = markdown(rows, args.top_k) + (
        f"\ntop-{args.top_k} overlap between methods:\n\n| | "
        + " | ".join(names)
        + " |\n"
        + "|---" * (len(names) + 1)
        + "|\n"
        + "".join(
            f"| {a} | " + " | ".join(f"{overlaps[a][b]:.2f}" for b in names) + " |\n" for a in names
        )
    )
    write_table(out, result, text)
    return rows


if __name__ == "__main__":
    main()
