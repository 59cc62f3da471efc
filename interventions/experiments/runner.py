"""The one runner of every driver: train a run unless it is done, parse ``-- passthrough``
arguments, and write a result table.

* :func:`fit_run` trains one run in this process (``train.py fit`` with the given arguments and
  ``--trainer.default_root_dir=<run>``, so into ``<run>/version_N/``) and returns its
  ``metrics.json``; a run whose ``<run>/latest/metrics.json`` exists is not trained again
  (``resume=True``), so an interrupted driver continues where it stopped;
* :func:`parse_args` splits a driver's own arguments from the ``train.py fit`` arguments after
  ``--`` (passed to every run);
* :func:`markdown_table` formats rows of cells;
* :func:`write_table` writes ``<out>/table.json`` and ``<out>/table.md`` and prints the markdown;
  a previous table it would lose is kept as ``table.prev<N>.*``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from interventions.cli import build_cli
from interventions.reporting.run_folder import latest_version, point_latest

__all__ = [
    "fit_run",
    "fit_run_folder",
    "markdown_table",
    "parse_args",
    "split_passthrough",
    "write_table",
]


def split_passthrough(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """``(own, passthrough)``: a driver's arguments before ``--`` and the ``train.py fit``
    arguments after it (``argv=None`` reads ``sys.argv``)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--" not in raw:
        return raw, []
    cut = raw.index("--")
    return raw[:cut], raw[cut + 1 :]


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """A driver's parsed arguments and the ``train.py fit`` arguments after ``--``."""
    own, passthrough = split_passthrough(argv)
    return parser.parse_args(own), passthrough


def fit_run(args: list[str], run: str | Path, resume: bool = True) -> dict[str, Any]:
    """Train one run in this process (``train.py fit`` with ``args`` and
    ``--trainer.default_root_dir=run``: a new ``run/version_N``) and return its ``metrics.json``;
    with ``resume`` a run whose latest finished version has a ``metrics.json`` is read, not
    trained again."""
    return json.loads((fit_run_folder(args, run, resume) / "metrics.json").read_text())


def fit_run_folder(args: list[str], run: str | Path, resume: bool = True) -> Path:
    """As :func:`fit_run`, but returns the version folder the metrics are in."""
    run = Path(run)
    done = latest_version(run)
    if resume and done is not None and (done / "metrics.json").is_file():
        return done
    cli = build_cli([*args, f"--trainer.default_root_dir={run}"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    folder = Path(cli.trainer.default_root_dir)
    if cli.trainer.is_global_zero:
        point_latest(folder)
    return folder


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header row, the separator and one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _contains(new: Any, old: Any) -> bool:
    """Whether ``new`` holds everything of ``old`` unchanged (dicts key by key, else equality)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _contains(new[k], v) for k, v in old.items())
    return new == old


def write_table(out: str | Path, table: Any, text: str, name: str = "table") -> Path:
    """``<out>/<name>.json`` (the numbers) and ``<out>/<name>.md`` (``text``); prints ``text``.

    A previous table that the new one does not contain unchanged (another set of tasks, other
    numbers) is not overwritten: it is renamed to ``<name>.prev<N>.{json,md}`` first, with the
    first free ``N``, and a line says so. A table that only adds to the previous one replaces it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(table, default=str))
    path = out / f"{name}.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if not _contains(data, previous):
            n = 1
            while (out / f"{name}.prev{n}.json").exists() or (out / f"{name}.prev{n}.md").exists():
                n += 1
            for ext in ("json", "md"):
                if (out / f"{name}.{ext}").is_file():
                    (out / f"{name}.{ext}").rename(out / f"{name}.prev{n}.{ext}")
            print(f"the previous {path} differs from this table: kept as {name}.prev{n}.json/.md")
    path.write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)
    return out / f"{name}.md"
