"""The lock of tested versions (``requirements.lock``): check, write, and lower bounds.

Standard library only, so it runs before anything is installed.

    python tools/lock.py requirements.lock               # the running environment == the lock?
    python tools/lock.py --write requirements.lock FREEZE  # a green freeze becomes the lock
    python tools/lock.py --lower-bounds pyproject.toml    # `name==lower bound` per dependency
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

# torch is installed on its own, first, from a pinned local build (see the Makefile)
SEPARATE = {"torch"}
HEADER = """\
# The versions `make test` last passed with: `make install` installs exactly these
# (pip -c requirements.lock). Written by `make lock` from a green `make test-latest`;
# edit pyproject.toml for ranges, never this file by hand.
"""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """``name -> version`` from ``name==version`` lines (comments and blanks skipped; a local
    version label such as ``+cpu`` dropped: ``==2.13.0`` matches the local build too)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line or line.startswith("-"):
            raise ValueError(f"not a 'name==version' line: {line!r}")
        name, version = (part.strip() for part in line.split("==", 1))
        pins[normalise(name)] = version.split("+", 1)[0]
    return pins


def write(lock: Path, freeze: Path) -> None:
    pins = parse_pins(freeze.read_text())
    for required in ("torch", "transformers", "lightning"):
        if required not in pins:
            raise SystemExit(f"{freeze} has no {required}: is it a freeze of the project's venv?")
    stamp = (
        f"# {datetime.date.today().isoformat()}, Python {platform.python_version()}, "
        f"{platform.machine()}\n"
    )
    body = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    lock.write_text(HEADER + stamp + body)
    print(f"wrote {lock}: {len(pins)} pinned versions")


def check(lock: Path) -> None:
    """Fail unless every distribution installed here has exactly its locked version."""
    pins = parse_pins(lock.read_text())
    project = "learned-interventions"
    wrong, unlocked = [], []
    for dist in metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name in (project, "pip", "setuptools", "wheel"):
            continue
        version = dist.version.split("+", 1)[0]
        if name not in pins:
            unlocked.append(f"{name}=={version}")
        elif pins[name] != version:
            wrong.append(f"{name}: installed {version}, locked {pins[name]}")
    if wrong or unlocked:
        lines = [f"the environment does not match {lock}:"]
        lines += [f"  {w}" for w in wrong]
        lines += [f"  not in the lock: {u}" for u in unlocked]
        lines.append("refresh the lock with `make test-latest && make lock`.")
        raise SystemExit("\n".join(lines))
    print(f"environment matches {lock} ({len(pins)} pinned versions)")


def lower_bounds(pyproject: Path) -> None:
    """Print ``name==bound`` for every direct dependency with a ``>=`` bound (extras dropped)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+).*", requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: {requirement!r} has no '>=' lower bound")
        name, bound = normalise(match.group(1)), match.group(3)
        if name not in SEPARATE:
            print(f"{name}=={bound}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", nargs=2, metavar=("LOCK", "FREEZE"))
    parser.add_argument("--lower-bounds", metavar="PYPROJECT")
    parser.add_argument("lock", nargs="?")
    args = parser.parse_args(argv)
    if args.write:
        write(Path(args.write[0]), Path(args.write[1]))
    elif args.lower_bounds:
        lower_bounds(Path(args.lower_bounds))
    elif args.lock:
        check(Path(args.lock))
    else:
        parser.print_help()
        sys.exit(2)


if __name__ == "__main__":
    main()
