"""``python -m interventions <command>``: the library's shell commands.

Commands:
    generate   greedy continuations of prompts with an exported intervention at several betas
               (``python -m interventions generate --help``)
"""

from __future__ import annotations

import sys

from interventions.commands import generate

COMMANDS = {"generate": generate}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        given = repr(argv[0]) if argv else "no command"
        raise SystemExit(f"python -m interventions: {given}; commands: {known}.\n{__doc__}")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
