"""The shell commands of ``python -m interventions``.

``generate``: greedy continuations of prompts with an exported intervention at several betas ::

    python -m interventions generate --intervention runs/ioi/activscalar/latest/intervention \\
        --prompt "Then, John and Mary went to the store. John gave a drink to" --beta 1 0 -1

It steers with any exported edit (ActivScalar, SteerVec, DynScalar, AUSteer's AUScale /
AUShift, CAA vectors); with ``--predictor <run>/w2s_predictor`` a W2S layer predictor picks the
layer each prompt is steered at (the intervention then holds one vector per layer, as a W2S run
exports it).

``data``: the public data sets (:mod:`datamodules.sources`, :mod:`datamodules.fetch`) ::

    python -m interventions data fetch {mwe,caa,boolq,copa,winogrande,ccc,all} [--dest DIR]
        [--from-url BASE_URL] [--force]     # download from the pinned origins, verified
    python -m interventions data list [SET ...] [--data-dir DIR] [--verify]
    python -m interventions data where      # the folders searched, in order
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datamodules import sources
from datamodules.fetch import ChecksumError, DownloadError, Fetched, fetch
from interventions.core.backbone import load_backbone
from interventions.core.errors import ConfigError
from interventions.edits.artifact import load_intervention, read_intervention_config
from interventions.evaluation.generation import steered_continuations
from interventions.methods.w2s.encoders import encode_prompts, prompt_text
from interventions.methods.w2s.module import load_predictor

__all__ = ["data", "generate"]


def _predicted_layers(predictor_dir: str, prompts: list[str], tokenizer: Any) -> Tensor:
    predictor = load_predictor(predictor_dir)
    encoder = predictor.encoder_config or {}
    name = encoder.get("encoder", "minilm")
    texts = prompts if name == "lm_internal" else [prompt_text(p, tokenizer) for p in prompts]
    embedding = encode_prompts(
        texts,
        encoder=name,
        backbone=encoder.get("backbone"),
        pooling=encoder.get("pooling", "last"),
    )
    return predictor.predict_layer(embedding)


def generate(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``python -m interventions generate``: print steered continuations."""
    parser = argparse.ArgumentParser(
        prog="python -m interventions generate",
        description="Greedy continuations of prompts with an exported intervention at each beta.",
    )
    parser.add_argument("--intervention", required=True, help="an exported intervention folder")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    parser.add_argument("--beta", type=float, nargs="+", default=[1.0, 0.0, -1.0])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument(
        "--backbone", help="model to steer (default: the one named in intervention.json)"
    )
    parser.add_argument(
        "--predictor", help="a W2S predictor folder: steer each prompt at its predicted layer"
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt in the tokenizer's chat template (user turn + assistant start)",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    meta = read_intervention_config(args.intervention)
    backbone = args.backbone or meta.get("backbone")
    if not backbone:
        raise SystemExit(f"{args.intervention} names no backbone: pass --backbone.")
    edit = load_intervention(args.intervention)
    model, tokenizer = load_backbone(backbone, dtype=args.dtype, device=args.device)
    prompts = list(args.prompt)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit(f"{backbone}'s tokenizer has no chat template: drop --chat.")
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    layers = None
    if args.predictor:
        layers = _predicted_layers(args.predictor, prompts, tokenizer)
    samples = steered_continuations(
        model,
        tokenizer,
        edit.to(args.device),
        prompts,
        betas=args.beta,
        max_new_tokens=args.max_new_tokens,
        layer_of_prompt=layers,
    )
    for i, sample in enumerate(samples):
        where = f" (W2S layer {int(layers[i])})" if layers is not None else ""
        print(f"--- prompt {i + 1}{where}: {sample['prompt']!r}")
        for beta, text in sample["continuations"].items():
            print(f"  beta {beta:+g}: {text!r}")
    return samples


# ---------------------------------------------------------------------------- data
def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


_REBUILT_NOTE = (
    "* rebuilt from indexed text in ../shared/data (same character count as the origin's file); "
    "the origin's bytes may differ from the recorded SHA-256: such a download is accepted when "
    "it is valid JSON with the origin's character count, and reported as such"
)


def _data_fetch(args: argparse.Namespace) -> list[Fetched]:
    entries = sources.files_of(args.set)
    dest = Path(args.dest).expanduser() if args.dest else sources.default_fetch_dir()
    base = args.base_url or sources.DEFAULT_BASE_URL
    size = _size(sum(e.size for e in entries))
    print(f"fetching {args.set} ({len(entries)} files, {size}) into {dest} from {base}")

    def report(result: Fetched) -> None:
        print(f"  {result.action:<10}  {result.file.relative}")
        if result.note:
            print(f"  {result.note}")

    results = fetch(
        args.set,
        dest,
        base_url=args.base_url,
        force=args.force,
        timeout=args.timeout,
        report=report,
    )
    done = sum(r.action == "downloaded" for r in results)
    print(f"{args.set}: {done} downloaded, {len(results) - done} already present (verified)")
    default = {f.path for f in sources.data_folders()}
    if dest not in default:
        print(
            f"{dest} is not searched by default: set {sources.ENV_VAR}={dest} or pass "
            f"data_dir={dest} (--data.data_dir {dest})"
        )
    return results


def _data_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = args.sets or list(sources.SETS)
    for name in names:
        sources.files_of(name)  # a clear error for an unknown name
    chosen = [s for s in sources.SETS.values() if "all" in names or s.name in names]
    folders = sources.data_folders(args.data_dir)
    print("looked up in: " + "; ".join(map(str, folders)))
    rows = []
    for data_set in chosen:
        found = {}
        for entry in data_set.files:
            folder = next((f for f in folders if (f.path / entry.relative).is_file()), None)
            found[entry.relative] = folder
        present = sum(f is not None for f in found.values())
        origins = ", ".join(
            dict.fromkeys(f"{e.origin.repo}@{e.origin.commit[:8]}" for e in data_set.files)
        )
        print(
            f"\n{data_set.name}: {data_set.description}; {len(data_set.files)} files, "
            f"{_size(data_set.size)}, {present} present"
        )
        print(f"  licence: {'; '.join(data_set.licences)}")
        print(f"  origin: {origins}")
        for entry in data_set.files:
            folder = found[entry.relative]
            status = "missing"
            if folder is not None:
                status = str(folder.path)
                if args.verify:
                    verdict = sources.check_file(entry, folder.path / entry.relative)
                    check = {"ok": "ok", "origin": "ok, origin's bytes"}.get(
                        verdict or "", "DIFFERS"
                    )
                    status += f" ({check})"
            mark = "*" if entry.rebuilt else " "
            print(f"  {entry.size:>9,} {mark} {entry.relative}  {status}")
            rows.append({"set": data_set.name, "file": entry.relative, "status": status})
    if any(e.rebuilt for s in chosen for e in s.files):
        print("\n" + _REBUILT_NOTE)
    return rows


def _data_where(args: argparse.Namespace) -> list[sources.DataFolder]:
    folders = sources.data_folders()
    print("data folders, in lookup order (per file, the first folder that has it wins):")
    if sources.env_data_dir() is None:
        print(f"  -  ${sources.ENV_VAR} is not set")
    for i, folder in enumerate(folders, 1):
        state = "exists" if folder.path.is_dir() else "does not exist"
        print(f"  {i}. {folder.path}  [{folder.label}]  {state}")
    print(
        f"`data fetch` writes to {sources.default_fetch_dir()} (change it with --dest DIR or ${sources.ENV_VAR})"
    )
    print("A datamodule's data_dir, when given, is the only folder searched.")
    return folders


def data(argv: list[str] | None = None) -> Any:
    """``python -m interventions data``: fetch, list and locate the public data sets."""
    parser = argparse.ArgumentParser(
        prog="python -m interventions data",
        description="The public data sets: download them from their pinned origins (verified by "
        "SHA-256), list them, and show where data files are looked up.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{fetch,list,where}")
    fetch_parser = sub.add_parser("fetch", help="download a set from its pinned origins")
    fetch_parser.add_argument("set", choices=sources.SET_NAMES)
    fetch_parser.add_argument(
        "--dest", help=f"data folder to fill (default: ${sources.ENV_VAR}, else the user cache)"
    )
    fetch_parser.add_argument(
        "--from-url",
        dest="base_url",
        metavar="BASE_URL",
        help=f"a mirror laid out as <base>/<owner>/<repo>/<commit>/<path> (default "
        f"{sources.DEFAULT_BASE_URL})",
    )
    fetch_parser.add_argument("--force", action="store_true", help="download present files again")
    fetch_parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    list_parser = sub.add_parser("list", help="the sets, their files, sizes, licences, presence")
    list_parser.add_argument("sets", nargs="*", metavar="SET", help="sets to list (default: all)")
    list_parser.add_argument("--data-dir", help="list an explicit data folder instead")
    list_parser.add_argument("--verify", action="store_true", help="check the files' SHA-256")
    sub.add_parser("where", help="the folders searched for data files, in order")
    args = parser.parse_args(argv)
    actions = {"fetch": _data_fetch, "list": _data_list, "where": _data_where}
    try:
        return actions[args.action](args)
    except (ConfigError, DownloadError, ChecksumError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
