"""Tests of the data sets' registry, the fetcher and the data lookup order, against a local HTTP
server (127.0.0.1, random port) that serves ../shared/data laid out as
``/{owner}/{repo}/{commit}/{path}`` (COPA's XML inside a .tar.bz2 built here). No internet."""

from __future__ import annotations

import bz2
import hashlib
import http.server
import io
import json
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamodules import sources
from datamodules.fetch import (
    ChecksumError,
    DownloadError,
    SourceNotFoundError,
    TruncatedDownloadError,
    fetch,
)
from datamodules.mwe import MWEDataModule
from datamodules.sources import FILES, SETS, DataFileNotFoundError, find_data_file
from interventions.__main__ import main


# ---------------------------------------------------------------------------- the local server
def _url_path(entry: sources.DataFile) -> str:
    return "/" + entry.url("http://host").split("/", 3)[3]


def _archive(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return bz2.compress(buffer.getvalue())


class Origin(http.server.ThreadingHTTPServer):
    """Serves ``routes`` (url path -> bytes) with Range support; ``modes`` (url path -> mode)
    misbehave: ``"truncate"`` (announce the length, send half, close), ``("cut_once", n)``
    (the first request sends n bytes and closes), ``"ignore_range"`` (always 200, full body).
    ``requests`` records ``(path, Range header)``."""

    daemon_threads = True

    def __init__(self, routes: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = dict(routes)
        self.modes: dict[str, Any] = {}
        self.requests: list[tuple[str, str | None]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def ranges(self, entry: sources.DataFile) -> list[str | None]:
        return [r for p, r in self.requests if p == _url_path(entry)]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Origin

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        path, wanted = self.path, self.headers.get("Range")
        self.server.requests.append((path, wanted))
        body = self.server.routes.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        mode = self.server.modes.get(path)
        if mode == "truncate" or (isinstance(mode, tuple) and mode[0] == "cut_once"):
            cut = len(body) // 2 if mode == "truncate" else mode[1]
            if mode != "truncate":
                self.server.modes.pop(path)  # only the first request is cut
            self._send(200, body, sent=body[:cut])
            return
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and mode != "ignore_range":
            start = int(match.group(1))
            self._send(
                206, body[start:], content_range=f"bytes {start}-{len(body) - 1}/{len(body)}"
            )
            return
        self._send(200, body)

    def _send(
        self, status: int, body: bytes, sent: bytes | None = None, content_range: str = ""
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        self.wfile.write(body if sent is None else sent)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def shared() -> Path:
    """../shared/data: the files the local origin serves (it must be there: nothing is skipped)."""
    root = sources.shared_data_dir()
    assert all((root / rel).is_file() for rel in FILES), f"{root} lacks registry files"
    return root


@pytest.fixture(scope="module")
def routes(shared: Path) -> dict[str, bytes]:
    """url path -> bytes, built from the registry: each origin's path at its commit."""
    served = {}
    for entry in FILES.values():
        data = (shared / entry.relative).read_bytes()
        served[_url_path(entry)] = _archive(entry.member, data) if entry.member else data
    return served


@pytest.fixture
def origin(routes: dict[str, bytes]) -> Iterator[Origin]:
    server = Origin(routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path: Path) -> Path:
    """No env var, a user cache under tmp_path (through platformdirs), no proxy for 127.0.0.1."""
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "platform-cache"
    monkeypatch.setattr(sources.platformdirs, "user_cache_dir", lambda app: str(cache / app))
    return cache / "learned-interventions" / "data"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.part"))


# ---------------------------------------------------------------------------- registry
def test_registry_matches_the_shared_files_and_layout(shared):
    assert set(sources.SET_NAMES) == {"mwe", "caa", "boolq", "copa", "winogrande", "ccc", "all"}
    assert len(SETS["mwe"].files) == 48 and len(FILES) == 57
    for entry in FILES.values():
        assert _sha(shared / entry.relative) == entry.sha256, entry.relative
        assert (shared / entry.relative).stat().st_size == entry.size
        assert len(entry.origin.commit) == 40 and entry.licence
    assert {e.relative for e in FILES.values() if e.rebuilt} == {
        "caa/refusal/test_dataset_ab.json",
        "ccc/country-capital.json",
    }
    copa = FILES["copa/balacopa-dev-all.xml"]
    assert copa.member == "balanced_copa/balacopa-dev-all.xml"
    assert copa.url().startswith("https://raw.githubusercontent.com/Balanced-COPA/")


# ---------------------------------------------------------------------------- fetch
def test_fetch_all_lands_verified_files_and_a_second_fetch_skips(origin, shared, tmp_path):
    dest = tmp_path / "dest"
    results = fetch("all", dest=dest, base_url=origin.base_url)
    assert [r.action for r in results] == ["downloaded"] * len(FILES)
    for entry in FILES.values():
        assert (dest / entry.relative).read_bytes() == (shared / entry.relative).read_bytes()
    assert not _parts(dest) and not (dest / "copa" / "balanced_copa.tar.bz2").exists()
    assert all(r.note is None for r in results)
    served = len(origin.requests)
    again = fetch("copa", dest=dest, base_url=origin.base_url)
    assert [r.action for r in again] == ["present", "present"]
    assert len(origin.requests) == served  # nothing downloaded again
    forced = fetch("ccc", dest=dest, base_url=origin.base_url, force=True)
    assert [r.action for r in forced] == ["downloaded", "downloaded"]


def test_404_is_a_clear_error(origin, tmp_path):
    entry = FILES["boolq/boolq.jsonl"]
    del origin.routes[_url_path(entry)]
    with pytest.raises(SourceNotFoundError, match="404") as info:
        fetch("boolq", dest=tmp_path, base_url=origin.base_url)
    message = str(info.value)
    assert "boolq/boolq.jsonl" in message and entry.url(origin.base_url) in message
    assert "\n" not in message and isinstance(info.value, ConnectionError)
    assert not (tmp_path / entry.relative).exists() and not _parts(tmp_path)


def test_offline_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="could not download winogrande/winogrande.jsonl"):
        fetch("winogrande", dest=tmp_path, base_url=f"http://127.0.0.1:{port}", timeout=5)
    assert not (tmp_path / "winogrande" / "winogrande.jsonl").exists()


def test_truncated_body_leaves_no_final_file(origin, tmp_path):
    entry = FILES["winogrande/winogrande.jsonl"]
    origin.modes[_url_path(entry)] = "truncate"
    with pytest.raises(TruncatedDownloadError) as info:
        fetch("winogrande", dest=tmp_path, base_url=origin.base_url)
    message = str(info.value)
    assert f"ended after {entry.size // 2} of {entry.size} bytes" in message
    assert entry.relative in message and entry.url(origin.base_url) in message
    assert "resume" in message and "\n" not in message
    assert not (tmp_path / entry.relative).exists()
    assert _parts(tmp_path) == [tmp_path / "winogrande" / "winogrande.jsonl.part"]


def test_wrong_checksum_leaves_nothing(origin, routes, tmp_path):
    entry = FILES["ccc/country_capitals.csv"]
    altered = bytearray(routes[_url_path(entry)])
    altered[100] ^= 1
    origin.routes[_url_path(entry)] = bytes(altered)
    with pytest.raises(ChecksumError, match="SHA-256") as info:
        fetch("ccc", dest=tmp_path, base_url=origin.base_url)
    message = str(info.value)
    assert entry.sha256 in message and hashlib.sha256(altered).hexdigest() in message
    assert entry.relative in message and entry.url(origin.base_url) in message
    assert not (tmp_path / entry.relative).exists() and not _parts(tmp_path)
    assert (tmp_path / "ccc" / "country-capital.json").is_file()  # the file before it is kept


def test_corrupt_archive_leaves_nothing(origin, tmp_path):
    entry = FILES["copa/balacopa-dev-all.xml"]
    origin.routes[_url_path(entry)] = b"not a bzip2 stream"
    with pytest.raises(ChecksumError, match=r"not a readable \.tar\.bz2"):
        fetch("copa", dest=tmp_path, base_url=origin.base_url)
    assert not (tmp_path / entry.relative).exists() and not _parts(tmp_path)


def test_interrupted_download_resumes_with_range(origin, shared, tmp_path):
    entry = FILES["boolq/boolq.jsonl"]
    origin.modes[_url_path(entry)] = ("cut_once", 100_000)
    with pytest.raises(TruncatedDownloadError):
        fetch("boolq", dest=tmp_path, base_url=origin.base_url)
    part = tmp_path / "boolq" / "boolq.jsonl.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / entry.relative).exists()
    [result] = fetch("boolq", dest=tmp_path, base_url=origin.base_url)
    assert result.action == "downloaded" and _sha(result.path) == entry.sha256
    assert origin.ranges(entry) == [None, "bytes=100000-"]
    assert not part.exists()


def test_a_server_that_ignores_range_restarts_the_download(origin, tmp_path):
    entry = FILES["copa/balacopa-dev-all.xml"]  # an archive member: the archive resumes
    origin.modes[_url_path(entry)] = ("cut_once", 5_000)
    with pytest.raises(TruncatedDownloadError):
        fetch("copa", dest=tmp_path, base_url=origin.base_url)
    assert (tmp_path / "copa" / "balanced_copa.tar.bz2.part").stat().st_size == 5_000
    origin.modes[_url_path(entry)] = "ignore_range"
    results = fetch("copa", dest=tmp_path, base_url=origin.base_url)
    assert [r.action for r in results] == ["downloaded", "downloaded"]
    assert _sha(tmp_path / entry.relative) == entry.sha256
    assert origin.ranges(entry) == [None, "bytes=5000-"] and not _parts(tmp_path)


def test_rebuilt_file_with_the_origins_bytes_is_accepted_and_reported(origin, routes, tmp_path):
    entry = FILES["caa/refusal/test_dataset_ab.json"]
    text = routes[_url_path(entry)].decode()
    items = json.loads(text)
    other = json.dumps(items, indent=4).replace("\n    ", "\n\t")  # other bytes, same JSON
    other = other + " " * (entry.rebuilt_chars - len(other))  # the origin's character count
    assert len(other) == entry.rebuilt_chars and other.encode() != routes[_url_path(entry)]
    origin.routes[_url_path(entry)] = other.encode()
    results = {r.file.relative: r for r in fetch("caa", dest=tmp_path, base_url=origin.base_url)}
    kept = results[entry.relative]
    assert kept.action == "downloaded" and kept.path.read_text() == other
    assert kept.note and "origin's bytes differ" in kept.note and entry.relative in kept.note
    assert results["caa/sycophancy/test_dataset.json"].note is None
    # the same JSON with a character missing fails: it is not the origin's file either
    origin.routes[_url_path(entry)] = other[:-1].encode()
    with pytest.raises(ChecksumError, match=f"origin's {entry.rebuilt_chars} characters"):
        fetch("caa", dest=tmp_path / "again", base_url=origin.base_url)
    assert not (tmp_path / "again" / entry.relative).exists()


# ---------------------------------------------------------------------------- lookup
def test_lookup_order_is_per_file(monkeypatch, isolated, tmp_path):
    env, shared_dir = tmp_path / "env", tmp_path / "shared"
    monkeypatch.setattr(sources, "shared_data_dir", lambda: shared_dir)
    relative = "ccc/country_capitals.csv"
    for folder in (shared_dir, isolated, env):
        (folder / "ccc").mkdir(parents=True)
    (shared_dir / relative).write_text("shared")
    assert find_data_file(relative) == shared_dir / relative
    (isolated / relative).write_text("cache")
    assert find_data_file(relative) == isolated / relative
    monkeypatch.setenv(sources.ENV_VAR, str(env))
    assert find_data_file(relative) == isolated / relative  # env folder lacks it: next folder
    (env / relative).write_text("env")
    assert find_data_file(relative) == env / relative
    assert [f.label for f in sources.data_folders()] == [
        f"${sources.ENV_VAR}",
        "user cache",
        "../shared/data next to the checkout",
    ]
    assert sources.default_fetch_dir() == env
    # an explicit data_dir is the only folder searched
    explicit = tmp_path / "explicit"
    with pytest.raises(DataFileNotFoundError, match="data_dir") as info:
        find_data_file(relative, explicit)
    assert str(explicit / relative) in str(info.value)
    assert f"data fetch ccc --dest {explicit}" in str(info.value)
    monkeypatch.delenv(sources.ENV_VAR)
    assert sources.default_fetch_dir() == isolated


def test_a_file_missing_everywhere_is_one_line_naming_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "shared_data_dir", lambda: tmp_path / "no-shared")
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        find_data_file("mwe/persona/narcissism.jsonl", who="MWEDataModule: ")
    message = str(info.value)
    assert "\n" not in message and "mwe/persona/narcissism.jsonl" in message
    for folder in sources.data_folders():
        assert str(folder.path) in message
    assert "Fetch it with: python -m interventions data fetch mwe" in message
    with pytest.raises(FileNotFoundError, match="data fetch mwe"):
        MWEDataModule(behavior="narcissism").build_examples()
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        find_data_file("ioi/ioi_templates_names.json")


# ---------------------------------------------------------------------------- the command
def test_data_command_where_list_and_fetch(monkeypatch, origin, capsys, tmp_path, isolated):
    monkeypatch.setattr(sources, "shared_data_dir", lambda: tmp_path / "no-shared")
    main(["data", "where"])
    out = capsys.readouterr().out
    assert str(isolated) in out and "is not set" in out and "does not exist" in out
    dest = tmp_path / "dest"
    main(["data", "fetch", "ccc", "--dest", str(dest), "--from-url", origin.base_url])
    out = capsys.readouterr().out
    assert out.count("downloaded  ccc/") == 2 and "ccc: 2 downloaded" in out
    assert f"set {sources.ENV_VAR}={dest}" in out
    assert all(_sha(dest / e.relative) == e.sha256 for e in SETS["ccc"].files)
    main(["data", "list", "ccc", "boolq", "--data-dir", str(dest), "--verify"])
    out = capsys.readouterr().out
    assert re.search(r"ccc/country-capital\.json +" + re.escape(f"{dest} (ok)"), out)
    assert re.search(r"ccc/country_capitals\.csv +" + re.escape(f"{dest} (ok)"), out)
    assert re.search(r"boolq/boolq\.jsonl +missing", out)
    assert "BoolQ CC-BY-SA-3.0" in out and "rebuilt from indexed text" in out
    with pytest.raises(SystemExit) as info:
        main(["data", "fetch", "boolq", "--dest", str(dest), "--from-url", origin.base_url + "/x"])
    assert str(info.value.code).startswith("error: could not download boolq/boolq.jsonl")
    with pytest.raises(SystemExit, match="error: unknown data set 'nope'"):
        main(["data", "list", "nope"])


# ---------------------------------------------------------------------------- a datamodule
def test_mwe_datamodule_reads_a_fetched_cache(monkeypatch, origin, tiny_backbone_dir, tmp_path):
    cache = tmp_path / "fetched"
    fetch("mwe", dest=cache, base_url=origin.base_url)
    monkeypatch.setenv(sources.ENV_VAR, str(cache))
    monkeypatch.setattr(sources, "shared_data_dir", lambda: tmp_path / "no-shared")
    dm = MWEDataModule(backbone=tiny_backbone_dir, behavior="corrigible-neutral-HHH")
    dm.setup()
    expected = cache / "mwe/advanced-ai-risk/lm_generated_evals/corrigible-neutral-HHH.jsonl"
    assert dm.behavior_file == expected
    assert len(dm.train_examples) > 0
    with pytest.raises(FileNotFoundError, match="data fetch caa"):
        MWEDataModule(backbone=tiny_backbone_dir, behavior="caa/sycophancy").build_examples()
