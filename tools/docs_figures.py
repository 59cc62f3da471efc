"""Regenerate the docs figures from a finished run: small PNGs of its heatmap and logits-vs-beta.

Nothing is trained and no model weights are loaded: the heatmap is drawn from the run's exported
edit (``<run>/intervention/``) and the curve from ``<run>/plots/logits_vs_beta.json``, with the
plotting functions the run itself used (:mod:`interventions.reporting.plots`).  The position axis
is labelled with the tokens of the run's example prompt when its data module (``config.yaml``)
and tokenizer load, else with position numbers.

    python tools/docs_figures.py                                   # runs/ioi/activscalar/latest
    python tools/docs_figures.py runs/ioi/steervec --out docs/assets --name ioi_steervec
    python tools/docs_figures.py RUN --tokens positions            # do not load a tokenizer

Writes ``<out>/<name>_heatmap.png`` and ``<out>/<name>_logits_vs_beta.png`` (``dpi`` 100,
lowered until each file is under ``--max-kb``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/docs_figures.py` from a checkout
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from interventions.edits import DynScalar  # noqa: E402
from interventions.edits.artifact import load_intervention, read_intervention_config  # noqa: E402
from interventions.reporting import plots  # noqa: E402
from interventions.reporting.run_folder import LATEST, resolve_run  # noqa: E402

DEFAULT_RUN = "runs/ioi/activscalar/latest"


def figure_name(run: Path, kind: str) -> str:
    """``ioi_activscalar`` for ``runs/ioi/activscalar/version_3``: the path below ``runs/``
    without the version folder, else the edit kind."""
    parts = list(run.resolve().parts)
    if "runs" in parts:
        below = parts[len(parts) - 1 - parts[::-1].index("runs") + 1 :]
        below = [p for p in below if p != "latest" and not p.startswith("version_")]
        if below:
            return "_".join(below)
    return kind


def run_folder(path: str | Path) -> Path:
    """The run folder ``path`` names (:func:`resolve_run`); a ``latest`` that is a text file
    (where links are not allowed) or missing (an experiment folder of the older layout, with the
    run's files in it) resolves through its experiment folder."""
    path = Path(path)
    if path.name == LATEST and not path.is_dir():
        path = path.parent
    return resolve_run(path)


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def example_tokens(run: Path, backbone: str) -> list[str]:
    """The decoded tokens of the run's example prompt, from the data module its ``config.yaml``
    names (built with the run's backbone, whose tokenizer only is loaded)."""
    from interventions.core.backbone import load_tokenizer

    config = _yaml(run / "config.yaml")
    data = config.get("data") or {}
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{run / 'config.yaml'} names no data module (data.class_path)")
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    init = dict(data.get("init_args") or {})
    init["backbone"] = ((config.get("model") or {}).get("init_args") or {}).get(
        "backbone", backbone
    )
    dm = cls(**init)
    tokenizer = load_tokenizer(init["backbone"])
    return [tokenizer.decode([i]) for i in tokenizer(dm.example_prompt)["input_ids"]]


def save_small(fig: Figure, path: Path, dpi: int, max_kb: int) -> Path:
    """Save ``fig`` as PNG at ``dpi``, lowered by 15% steps until the file is under ``max_kb``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", pil_kwargs={"optimize": True})
        if path.stat().st_size < max_kb * 1024 or dpi <= 40:
            break
        dpi = int(dpi * 0.85)
    plt.close(fig)
    return path


def docs_figures(
    run: str | Path = DEFAULT_RUN,
    out: str | Path = ROOT / "docs" / "assets",
    name: str | None = None,
    tokens: str = "auto",
    dpi: int = 100,
    max_kb: int = 150,
) -> list[Path]:
    """Write the heatmap and logits-vs-beta PNGs of ``run`` into ``out``; returns their paths.

    Args:
        run: a run folder (``version_N``, ``latest``) or an experiment folder (its latest run).
        out: folder of the PNGs.
        name: file name prefix; ``None``: :func:`figure_name`.
        tokens: ``auto`` (the example prompt's tokens, or positions when they cannot be had) or
            ``positions`` (position numbers; loads nothing).
        dpi: resolution of the PNGs.
        max_kb: the largest file size; the resolution is lowered until each file is smaller.
    """
    folder = run_folder(run)
    export = folder / "intervention"
    curve_file = folder / "plots" / "logits_vs_beta.json"
    if not export.is_dir() and not curve_file.is_file():
        raise FileNotFoundError(
            f"{folder} holds neither intervention/ nor plots/logits_vs_beta.json: is it a "
            "finished run folder (see interventions/reporting/run_folder.py)?"
        )
    out = Path(out)
    written: list[Path] = []
    meta = read_intervention_config(export) if export.is_dir() else {}
    kind = meta.get("type", "run")
    prefix = name or figure_name(folder, kind)
    if export.is_dir():
        edit = load_intervention(export)
        backbone = meta.get("backbone", "")
        title = f"{type(edit).__name__} on {backbone}" if backbone else type(edit).__name__
        if isinstance(edit, DynScalar):
            print(
                f"skipped the heatmap: a DynScalar's scalars depend on a prompt's activations; "
                f"{folder / 'plots' / 'heatmap.png'} is the run's own",
                file=sys.stderr,
            )
        else:
            from interventions.methods.scaling.report import heatmap_values

            values = heatmap_values(edit, None, None)
            columns = max(v.shape[1] for v in values.values())
            labels = [str(p) for p in range(columns)]
            if tokens == "auto":
                try:
                    labels = example_tokens(folder, backbone)
                except Exception as err:  # noqa: BLE001 - any failure: fall back to positions
                    print(f"position numbers on the x axis ({err})", file=sys.stderr)
            fig = plots.site_heatmaps(
                values,
                labels,
                edit.layers,
                title,
                value_label=plots.HEATMAP_VALUE_LABELS.get(edit.kind),
            )
            written.append(save_small(fig, out / f"{prefix}_heatmap.png", dpi, max_kb))
    else:
        title = ""
    if curve_file.is_file():
        curve = json.loads(curve_file.read_text())
        fig = plots.logits_vs_beta(curve, title=title)
        written.append(save_small(fig, out / f"{prefix}_logits_vs_beta.png", dpi, max_kb))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default=DEFAULT_RUN, help=f"default {DEFAULT_RUN}")
    parser.add_argument("--out", default=str(ROOT / "docs" / "assets"), help="output folder")
    parser.add_argument("--name", default=None, help="file name prefix (default: from the run)")
    parser.add_argument("--tokens", choices=["auto", "positions"], default="auto")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--max-kb", type=int, default=150)
    args = parser.parse_args(argv)
    try:
        paths = docs_figures(args.run, args.out, args.name, args.tokens, args.dpi, args.max_kb)
    except (FileNotFoundError, ValueError) as err:
        print(f"docs_figures: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path}  ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
