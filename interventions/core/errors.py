"""The project's error types for configuration that cannot work.

A :class:`ConfigError` is raised at the boundary, as early as the value can be checked (before a
model is loaded or a file is written where possible), with a one-line message: what was wrong,
what was expected and how to fix it.  The command line (``interventions.cli.main``) prints such
an error as that one line instead of a traceback, also when jsonargparse has wrapped it while
building a class from the config (:func:`find_config_error`).

:class:`ConfigError` is a :class:`ValueError`, so code that caught the ``ValueError`` these checks
raised before keeps working; :class:`BackboneNotFoundError` is also a :class:`FileNotFoundError`
(an :class:`OSError`), as the backbone loader's errors were.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["BackboneNotFoundError", "ConfigError", "did_you_mean", "find_config_error"]


class ConfigError(ValueError):
    """A configured value (a site, a backbone, an architecture, a split size, ...) that cannot
    work; the message is one line saying what was wrong, what was expected and how to fix it."""


class BackboneNotFoundError(ConfigError, FileNotFoundError):
    """A backbone name that is no alias, no existing folder and no Hub model that can be
    loaded here (offline, or not of the ``owner/name`` form)."""


def did_you_mean(name: object, choices: Iterable[str], n: int = 2) -> str:
    """``" Did you mean 'x'?"`` (or ``'x' or 'y'``) for the up to ``n`` closest of ``choices``
    to ``name`` (by difflib), else ``""``."""
    if not isinstance(name, str):
        return ""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean {' or '.join(map(repr, matches))}?" if matches else ""


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """``error`` itself if it is a :class:`ConfigError`, else the first one in its chain of
    causes (jsonargparse re-raises the error of a class's ``__init__`` as the cause of its own
    ``ValueError``); ``None`` when there is none."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
