"""``python -m interventions <command>``: the library's shell commands.

Commands:
    data       fetch the public data sets from their pinned origins, list them, show where data
               is looked up (``python -m interventions data --help``)
    generate   greedy continuations of prompts with an exported intervention at several betas
               (``python -m interventions generate --help``)
"""

from __future__ import annotations

import sys

from interventions.commands import data, generate

COMMANDS = {"data": data, "generate": generate}
SUMMARIES = {
    "data": "fetch the public data sets (mwe, caa, boolq, copa, winogrande, ccc), list them, "
    "show where data is looked up",
    "generate": "greedy continuations of prompts with an exported intervention at several betas",
}
HELP_FLAGS = ("-h", "--help")


def usage() -> str:
    """The text of ``python -m interventions --help``: the usage line and every command."""
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m interventions <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {SUMMARIES.get(name, '')}" for name in sorted(COMMANDS)]
    lines += ["", "Run `python -m interventions <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HELP_FLAGS:
        print(usage())
        return
    if not argv or argv[0] not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        raise SystemExit(f"python -m interventions: {given}; commands: {known}.\n\n{usage()}")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
