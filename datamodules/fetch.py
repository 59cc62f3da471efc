"""Download the public data sets from their pinned origins (``python -m interventions data fetch``).

:func:`fetch` downloads every file of a set of :data:`datamodules.sources.SETS` from
``{base_url}/{owner}/{repo}/{commit}/{path}`` (default base: ``https://raw.githubusercontent.com``;
a mirror with the same layout works with ``base_url``) into a data folder (default:
:func:`datamodules.sources.default_fetch_dir`, i.e. ``$LEARNED_INTERVENTIONS_DATA`` or the user
cache), keeping each file's path under the data folder.

**Atomic.** Each file is downloaded to ``<name>.part`` next to its final path, checked against its
recorded SHA-256 (:func:`datamodules.sources.check_file`), then moved into place with
``os.replace``; a truncated, corrupt or altered download never leaves a file at the final path.
COPA's XML is a member of a ``.tar.bz2`` archive: the archive is downloaded to its own ``.part``,
the member extracted to ``<name>.part``, checked and moved; the archive is then removed.

**Resumable.** A download whose body ends early (connection lost, or fewer bytes than its
``Content-Length``) keeps its ``.part``; the next call sends ``Range: bytes=<size>-`` and appends
the rest. A server that ignores ``Range`` (answers 200) is read from the start again; one that
answers 416 gets a fresh download. A complete ``.part`` that fails the check is removed.

**Skipped.** A file already at its final path that passes the check is not downloaded again
(``force=True`` downloads it anyway).

**Errors** (one line each, naming the file, the URL and what was expected):
:class:`SourceNotFoundError` (HTTP 404), :class:`DownloadError` (offline, refused, other HTTP
errors), :class:`TruncatedDownloadError` (body shorter than announced: run again to resume) --
all :class:`ConnectionError` -- and :class:`ChecksumError` (a :class:`ValueError`: the bytes are
not the recorded ones).

The two files rebuilt from indexed text in ``../shared/data`` (``caa/refusal/test_dataset_ab.json``,
``ccc/country-capital.json``) may come from their origin with other bytes than the recorded hash;
they are accepted when they are valid JSON with the origin's character count, and the
:class:`Fetched` result carries a note saying so (see :mod:`datamodules.sources`).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from datamodules.sources import (
    DataFile,
    check_file,
    default_fetch_dir,
    describe_mismatch,
    files_of,
    origin_note,
)

__all__ = [
    "ChecksumError",
    "DownloadError",
    "Fetched",
    "SourceNotFoundError",
    "TruncatedDownloadError",
    "fetch",
    "fetch_file",
]

CHUNK = 1 << 16
USER_AGENT = "learned-interventions-data-fetch"


class DownloadError(ConnectionError):
    """A file could not be downloaded (offline, connection refused, an HTTP error)."""


class SourceNotFoundError(DownloadError):
    """The server answered 404 Not Found for a file's URL."""


class TruncatedDownloadError(DownloadError):
    """The body ended before its announced length; the ``.part`` file is kept for resuming."""


class ChecksumError(ValueError):
    """Downloaded bytes that are not the recorded ones (nothing is left at the final path)."""


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_file` did with one file.

    Attributes:
        file: The registry entry.
        path: Its final path.
        action: ``"present"`` (already there and verified) or ``"downloaded"``.
        note: A message to show, e.g. that a rebuilt file came with the origin's bytes.
    """

    file: DataFile
    path: Path
    action: Literal["present", "downloaded"]
    note: str | None = None


def fetch(
    set_name: str,
    dest: str | Path | None = None,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    report: Callable[[Fetched], None] | None = None,
) -> list[Fetched]:
    """Download every file of a set (or ``"all"``) into ``dest``, verified and atomically.

    Stops at the first file that fails (its error names it); files already done stay, and a
    later call skips them and resumes a partial download.

    Args:
        set_name: ``mwe``, ``caa``, ``boolq``, ``copa``, ``winogrande``, ``ccc`` or ``all``.
        dest: The data folder (default: ``$LEARNED_INTERVENTIONS_DATA``, else the user cache).
        base_url: Where the repositories are (default ``https://raw.githubusercontent.com``).
        force: Download files again even when they are present and verified.
        timeout: Seconds to wait for the server at each step.
        report: Called with each file's :class:`Fetched` as soon as it is done.

    Raises:
        ConfigError: Unknown set name.
        DownloadError: see :func:`fetch_file`.
        ChecksumError: see :func:`fetch_file`.
    """
    entries = files_of(set_name)
    root = Path(dest).expanduser() if dest is not None else default_fetch_dir()
    results = []
    for entry in entries:
        result = fetch_file(entry, root, base_url=base_url, force=force, timeout=timeout)
        results.append(result)
        if report is not None:
            report(result)
    return results


def fetch_file(
    entry: DataFile,
    dest: str | Path | None = None,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> Fetched:
    """Download one registry file to ``dest / entry.relative`` (see the module docstring).

    Raises:
        SourceNotFoundError: The server answered 404.
        TruncatedDownloadError: The body was shorter than announced (run again to resume).
        DownloadError: Offline, refused, timed out or another HTTP error.
        ChecksumError: The bytes (or the archive member) are not the recorded ones; the
            ``.part`` file is removed and nothing is written at the final path.
    """
    root = Path(dest).expanduser() if dest is not None else default_fetch_dir()
    final = root / entry.relative
    url = entry.url(base_url)
    if not force and final.is_file() and (verdict := check_file(entry, final)) is not None:
        return Fetched(entry, final, "present", _note(entry, verdict))
    final.parent.mkdir(parents=True, exist_ok=True)
    download_name = PurePosixPath(entry.path).name if entry.member else final.name
    part = final.parent / f"{download_name}.part"
    if force:
        part.unlink(missing_ok=True)
    if entry.member is None and part.is_file() and check_file(entry, part) is not None:
        pass  # a complete download left by an interrupted run: only the move is missing
    else:
        _download(entry.relative, url, part, timeout)
    candidate = _extract(entry, url, part, final) if entry.member else part
    verdict = check_file(entry, candidate)
    if verdict is None:
        mismatch = describe_mismatch(entry, candidate)
        candidate.unlink(missing_ok=True)
        raise ChecksumError(
            f"{entry.relative}: the download from {url} has {mismatch}; removed it, nothing was "
            f"written to {final}. Run the command again; if it persists, the origin changed."
        )
    os.replace(candidate, final)
    return Fetched(entry, final, "downloaded", _note(entry, verdict))


def _note(entry: DataFile, verdict: str) -> str | None:
    return origin_note(entry) if verdict == "origin" else None


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes <first>-<last>/<total>`` header."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _download(relative: str, url: str, part: Path, timeout: float, resume: bool = True) -> None:
    """Download ``url`` into ``part``, appending to an existing ``part`` when the server
    continues it (HTTP 206 from the right byte), else writing it from the start."""
    start = part.stat().st_size if resume and part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and start:  # the part cannot be continued: download it afresh
            part.unlink(missing_ok=True)
            return _download(relative, url, part, timeout, resume=False)
        if err.code == 404:
            raise SourceNotFoundError(
                f"could not download {relative}: {url} answered 404 Not Found (is the base URL "
                f"right? the files are looked up as <base>/<owner>/<repo>/<commit>/<path>)"
            ) from None
        raise DownloadError(
            f"could not download {relative} from {url}: HTTP {err.code} {err.reason}"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(
            f"could not download {relative} from {url} ({reason}). Check the internet connection "
            f"(or proxy), or fetch from a mirror with --from-url BASE_URL."
        ) from err
    with response:
        status = getattr(response, "status", None) or 200
        if status == 206 and _range_start(response.headers.get("Content-Range")) != start:
            # a partial answer that does not continue our part (or one we did not ask for)
            part.unlink(missing_ok=True)
            return _download(relative, url, part, timeout, resume=False)
        resumed = start > 0 and status == 206  # else the server ignored Range: start again
        received = start if resumed else 0
        length = response.headers.get("Content-Length")
        total = received + int(length) if length and length.strip().isdigit() else None
        with open(part, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
            except (http.client.HTTPException, OSError) as err:
                raise TruncatedDownloadError(
                    f"{relative}: the download from {url} broke off after {received} bytes "
                    f"({err!r}); kept {part}: run the same command again to resume"
                ) from err
    if total is not None and received < total:
        raise TruncatedDownloadError(
            f"{relative}: the download from {url} ended after {received} of {total} bytes; kept "
            f"{part}: run the same command again to resume"
        )
    return None


def _extract(entry: DataFile, url: str, archive: Path, final: Path) -> Path:
    """Extract ``entry.member`` of the downloaded ``archive`` to ``<final>.part``; the archive
    is removed either way (a complete archive that fails would fail again)."""
    out = final.parent / f"{final.name}.part"
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            try:
                member = tar.extractfile(entry.member or "")
            except KeyError:
                member = None
            if member is None:
                raise ChecksumError(
                    f"{entry.relative}: the archive {url} has no file {entry.member}; nothing "
                    f"was written to {final}"
                )
            with member, open(out, "wb") as f:
                shutil.copyfileobj(member, f)
    except (tarfile.TarError, EOFError, OSError) as err:
        out.unlink(missing_ok=True)
        raise ChecksumError(
            f"{entry.relative}: the archive downloaded from {url} is not a readable .tar.bz2 "
            f"({err}); removed it, nothing was written to {final}. Run the command again."
        ) from err
    finally:
        archive.unlink(missing_ok=True)
    return out
