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

from interventions.core.sites import ModelDims
from interventions.edits.point import EDITS, PointEdit

__all__ = [
    "NonFiniteEditError",
    "load_intervention",
    "non_finite_sites",
    "read_intervention_config",
    "save_intervention",
]

FORMAT = "learned-interventions"
FORMAT_VERSION = 1
WEIGHTS_NAME = "intervention.safetensors"
CONFIG_NAME = "intervention.json"


# ------------------------------------------------------------------------------ any artefact
def write_artifact(
    folder: str | Path,
    name: str,
    kind: str,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    extra: dict | None = None,
) -> Path:
    """``<folder>/<name>.safetensors`` + ``<name>.json``: the tensors, and ``meta`` under the
    versioned header (``format``, ``format_version``, ``type``) with the tensor shapes and
    ``extra``; returns the folder.  Every artefact of the project (edits, the W2S predictor) is
    written by this function."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = dict(format=FORMAT, format_version=FORMAT_VERSION, type=kind)
    body = {**header, **meta, "tensors": {k: list(t.shape) for k, t in tensors.items()}}
    if extra:
        body["extra"] = extra
    save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"type": kind})
    (folder / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
    return folder


def artifact_folder(path: str | Path, name: str, what: str) -> Path:
    """The folder of an artefact given the folder or either of its two files."""
    path = Path(path)
    if path.is_file() and path.name in (f"{name}.json", f"{name}.safetensors"):
        return path.parent
    if not path.exists():
        raise FileNotFoundError(f"No {what} at {path}.")
    return path


def read_artifact_config(
    path: str | Path, name: str, what: str, made_by: str, kind: str | None = None
) -> dict[str, Any]:
    """The checked JSON of an artefact: valid JSON, our ``format``, a ``format_version`` this
    version reads and (given ``kind``) that ``type``; clear errors otherwise.  Unknown keys are
    kept (newer files keep loading)."""
    folder = artifact_folder(path, name, what)
    config_file = folder / f"{name}.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No {name}.json in {folder}: an exported {what} is a folder with {name}.json and "
            f"{name}.safetensors ({made_by})."
        )
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the file is corrupt.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{config_file} is not a learned-interventions file (no 'format': "
            "'learned-interventions' entry)."
        )
    if kind is not None and meta.get("type") != kind:
        raise ValueError(f"{config_file} holds a {meta.get('type')!r}, not a {what}.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{config_file} has format_version {version!r}; this version of learned-interventions "
            f"reads up to {FORMAT_VERSION}. Upgrade the package to load it."
        )
    return meta


def read_artifact_tensors(path: str | Path, name: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors of an artefact (a clear error when the file is missing or unreadable)."""
    weights = artifact_folder(path, name, what) / f"{name}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; re-export the {what}.")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err}).") from err


# ------------------------------------------------------------------------------ edits
class NonFiniteEditError(ValueError):
    """An edit holds NaN or infinite values (e.g. trained in a precision that overflowed)."""


def non_finite_sites(edit: PointEdit) -> list[str]:
    """The sites of ``edit`` whose parameters hold a NaN or an infinity (empty: all finite)."""
    return [site for site, p in edit.params.items() if not bool(torch.isfinite(p).all())]


def save_intervention(
    edit: PointEdit, folder: str | Path, backbone: str | None = None, extra: dict | None = None
) -> Path:
    """Write ``edit`` to ``folder`` (created if needed); returns the folder.

    Args:
        edit: the edit to save.
        folder: target folder.
        backbone: name the backbone was loaded by (an alias, hub name or path), stored for users.
        extra: further JSON-serialisable information (metrics, training config), kept as is.

    Raises:
        NonFiniteEditError: the edit holds NaN or infinite values; nothing is written.
    """
    bad = non_finite_sites(edit)
    if bad:
        raise NonFiniteEditError(
            f"Not saving the {type(edit).__name__}: its parameters on site(s) {bad} hold NaN or "
            "infinite values. If it was trained in half precision, train it with "
            "precision='32-true' (or 'bf16-mixed')."
        )
    meta = dict(
        backbone=backbone,
        dims=asdict(edit.dims),
        config=edit.config(),
        num_parameters=edit.num_parameters(),
    )
    return write_artifact(folder, "intervention", edit.kind, dict(edit.params), meta, extra)


def read_intervention_config(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an exported intervention (folder or either of its two files)."""
    return read_artifact_config(
        path, "intervention", "intervention", "written at the end of `train.py fit`"
    )


def load_intervention(path: str | Path, device: str | torch.device = "cpu") -> PointEdit:
    """Rebuild an exported edit; attach it with :func:`interventions.core.hooks.attach`.

    Args:
        path: the exported folder, or either of its two files.
        device: where to put the edit's tensors (default the CPU).  The parameters are float32
            whatever the backbone's dtype; ``attach`` works on any device and dtype of the
            activations (the edit is computed in float32 on each activation's device and
            returned in the activation's dtype), so this only saves the copies.

    ``attach`` refuses a model of another architecture or size with a clear message.
    """
    folder = artifact_folder(path, "intervention", "intervention")
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
    tensors = read_artifact_tensors(folder, "intervention", "intervention")
    weights = folder / WEIGHTS_NAME
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
    return edit.to(device)
