"""Export and import learned interventions: ``intervention.safetensors`` + ``intervention.json``.

The JSON holds the edit type, its configuration, the backbone it was trained on and the model
sizes (architecture, layers, d_model, heads, d_mlp), plus a format version; the safetensors file
holds the parameter tensors.  Nothing is pickled, so loading a file someone else made runs no
code.  Unknown JSON keys are ignored (newer files keep loading); a missing or mismatching tensor,
an unknown type or a file that is not an intervention gives a clear error.

Use::

    edit = load_intervention("runs/ioi-activscalar/intervention")
    model, tok = load_backbone(edit_backbone(...))
    with attach(model, edit, beta=1.0):
        model.generate(...)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interventions.edits import EDITS, PointEdit
from interventions.sites import ModelDims

FORMAT_VERSION = 1
WEIGHTS_NAME = "intervention.safetensors"
CONFIG_NAME = "intervention.json"


def save_intervention(
    edit: PointEdit, folder: str | Path, backbone: str | None = None, extra: dict | None = None
) -> Path:
    """Write ``edit`` to ``folder`` (created if needed); returns the folder.

    Args:
        edit: the edit to save.
        folder: target folder.
        backbone: name the backbone was loaded by (an alias, hub name or path), stored for users.
        extra: further JSON-serialisable information (metrics, training config), kept as is.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {site: p.detach().cpu().contiguous() for site, p in edit.params.items()}
    meta = dict(
        format="learned-interventions",
        format_version=FORMAT_VERSION,
        type=edit.kind,
        backbone=backbone,
        dims=asdict(edit.dims),
        config=edit.config(),
        num_parameters=edit.num_parameters(),
        tensors={name: list(t.shape) for name, t in tensors.items()},
    )
    if extra:
        meta["extra"] = extra
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"type": edit.kind})
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_intervention_config(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an exported intervention (folder or either of its two files)."""
    folder = _folder(path)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_NAME} in {folder}: an exported intervention is a folder with "
            f"{CONFIG_NAME} and {WEIGHTS_NAME} (written at the end of `train.py fit`)."
        )
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the file is corrupt.") from err
    if not isinstance(meta, dict) or meta.get("format") != "learned-interventions":
        raise ValueError(
            f"{config_file} is not a learned-interventions file (no 'format': "
            "'learned-interventions' entry)."
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{config_file} has format_version {version!r}; this version of learned-interventions "
            f"reads up to {FORMAT_VERSION}. Upgrade the package to load it."
        )
    return meta


def load_intervention(path: str | Path) -> PointEdit:
    """Rebuild an exported edit; attach it with :func:`interventions.hooks.attach`.

    ``attach`` refuses a model of another architecture or size with a clear message.
    """
    folder = _folder(path)
    meta = read_intervention_config(folder)
    kind = meta.get("type")
    if kind not in EDITS:
        raise ValueError(
            f"{folder / CONFIG_NAME} has intervention type {kind!r}; known types: "
            f"{', '.join(sorted(EDITS))}."
        )
    try:
        dims = ModelDims(**meta["dims"])
        edit = EDITS[kind](dims, **meta["config"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{folder / CONFIG_NAME} is incomplete or corrupt: {err}.") from err
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; re-export the intervention.")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err}).") from err
    expected = set(edit.params.keys())
    if set(tensors) != expected:
        raise ValueError(
            f"{weights} holds tensors {sorted(tensors)} but a {kind} on sites "
            f"{sorted(expected)} needs exactly {sorted(expected)}; the files do not belong together."
        )
    with torch.no_grad():
        for site, param in edit.params.items():
            if tensors[site].shape != param.shape:
                raise ValueError(
                    f"{weights}: tensor {site!r} has shape {list(tensors[site].shape)}, expected "
                    f"{list(param.shape)} from {CONFIG_NAME}; the files do not belong together."
                )
            param.copy_(tensors[site])
    return edit


def _folder(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
        return path.parent
    if not path.exists():
        raise FileNotFoundError(f"No intervention at {path}.")
    return path
