"""A small, read-only stand-in for the Hugging Face Hub, serving local folders as model repos on 127.0.0.1.

It answers the requests `huggingface_hub` and `diffusers` make when a pipeline is loaded by repo id:

* ``GET /api/models/{repo_id}`` and ``GET /api/models/{repo_id}/revision/{revision}``: repo info (``sha``,
  ``siblings``, ...), with ``?blobs=true`` (file sizes and hashes) and ``?expand=...`` (selected fields only);
* ``GET /api/models/{repo_id}/tree/{revision}[/{path}]``: the file listing (``?recursive=true``, ``?expand=true``);
* ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{path}``: a file, with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and ``Content-Type`` headers (and ``Range`` support for resumed downloads).

It also answers ``GET /api/agent-harnesses`` (an empty registry; huggingface_hub fetches it to build its user
agent unless telemetry is disabled) and ``/api/telemetry/...`` (200).

Unknown repos, revisions and files get a 404 with the ``X-Error-Code`` header the Hub uses (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``), so the clients raise their usual errors. Every request is recorded in
`HubServer.requests` (with a path pattern such as ``GET /api/models/{repo_id}/revision/{revision}``); requests to
endpoints it does not implement are answered with 404 (405 for writes) and also listed in `HubServer.unknown`.

The content of each folder is read once, when the server is created: every repo has a single commit, whose hash
(``sha``) is derived from the repo id and the files, and is reachable as revision ``main`` or by that hash.

Usage::

    with serve_repos({"org/brics-tiny": folder}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # and the constants huggingface_hub read at import time
        ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_BRANCH = "main"
COMMIT_DATE = "2024-01-01T00:00:00.000Z"
# Files stored with Git LFS on the Hub (by extension or size): their ETag is the sha256 of the content.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".gguf", ".npz")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK_SIZE = 1 << 16
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class RepoFile:
    """One file of a served repo, with the hashes the Hub reports for it."""

    path: str  # relative, "/"-separated
    local_path: Path
    size: int
    sha256: str
    git_oid: str  # git blob id (of the LFS pointer for LFS files)
    lfs: bool

    @classmethod
    def from_disk(cls, path: str, local_path: Path) -> "RepoFile":
        data = local_path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        lfs = path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
        git_oid = _git_blob_oid(_lfs_pointer(sha256, len(data)) if lfs else data)
        return cls(path=path, local_path=local_path, size=len(data), sha256=sha256, git_oid=git_oid, lfs=lfs)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def lfs_info(self) -> dict:
        return {"sha256": self.sha256, "size": self.size, "pointerSize": len(_lfs_pointer(self.sha256, self.size))}


class Repo:
    """A local folder exposed as a single-commit model repo."""

    def __init__(self, repo_id: str, folder: str | os.PathLike):
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder (repo {repo_id!r})")
        self.repo_id = repo_id
        self.folder = folder
        self.files: dict[str, RepoFile] = {}
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                local_path = Path(root) / name
                path = local_path.relative_to(folder).as_posix()
                self.files[path] = RepoFile.from_disk(path, local_path)
        digest = hashlib.sha1(repo_id.encode())
        for path, file in sorted(self.files.items()):
            digest.update(f"\0{path}\0{file.git_oid}".encode())
        self.sha = digest.hexdigest()

    def has_revision(self, revision: str) -> bool:
        return revision in (DEFAULT_BRANCH, self.sha)

    def folders(self) -> set[str]:
        return {str(parent.as_posix()) for path in self.files for parent in Path(path).parents if str(parent) != "."}

    def info(self, *, blobs: bool = False, expand: list[str] | None = None) -> dict:
        siblings = []
        for file in self.files.values():
            sibling: dict = {"rfilename": file.path}
            if blobs:
                sibling.update(size=file.size, blobId=file.git_oid)
                if file.lfs:
                    sibling["lfs"] = file.lfs_info()
            siblings.append(sibling)
        is_pipeline = "model_index.json" in self.files
        tags = ["diffusers", "safetensors"] if is_pipeline else []
        info = {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.sha,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "diffusers" if is_pipeline else None,
            "tags": tags,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(file.size for file in self.files.values()),
        }
        if expand:  # like the Hub: only the requested fields (and the ids)
            info = {key: value for key, value in info.items() if key in ("_id", "id", *expand)}
        return info

    def tree(self, prefix: str, *, recursive: bool, expand: bool) -> list[dict] | None:
        """Entries under ``prefix`` (``""`` for the root), or None if it is not a folder of the repo."""
        folders = self.folders()
        if prefix and prefix not in folders:
            return None
        start = f"{prefix}/" if prefix else ""

        def wanted(path: str) -> bool:
            return path.startswith(start) and (recursive or "/" not in path[len(start):])

        last_commit = {"id": self.sha, "title": "Upload folder", "date": COMMIT_DATE}
        entries = []
        for folder in sorted(f for f in folders if wanted(f)):
            entry = {"type": "directory", "oid": hashlib.sha1(f"{self.sha}\0{folder}".encode()).hexdigest(),
                     "size": 0, "path": folder}
            if expand:
                entry["lastCommit"] = last_commit
            entries.append(entry)
        for file in self.files.values():
            if not wanted(file.path):
                continue
            entry = {"type": "file", "oid": file.git_oid, "size": file.size, "path": file.path}
            if file.lfs:
                info = file.lfs_info()
                entry["lfs"] = {"oid": info["sha256"], "size": info["size"], "pointerSize": info["pointerSize"]}
            if expand:
                entry["lastCommit"] = last_commit
            entries.append(entry)
        return entries


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # as requested, with its query string
    pattern: str  # e.g. "GET /api/models/{repo_id}/revision/{revision}", or "? GET <path>" when unknown
    status: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "hub-stand-in/1"
    server: "_Server"

    # ------------------------------------------------------------------ plumbing
    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track(self.connection, add=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        logger.debug("%s - %s", self.address_string(), format % args)

    def _drain_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, CHUNK_SIZE))
            if not chunk:
                break
            length -= len(chunk)

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None, *,
              content_type: str = "application/json; charset=utf-8", pattern: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.server.hub._record(LoggedRequest(self.command, self.path, pattern, int(status)))

    def _json(self, data, *, pattern: str, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers, pattern=pattern)

    def _error(self, status: int, message: str, *, pattern: str, code: str | None = None,
               headers: Mapping[str, str] | None = None) -> None:
        headers = dict(headers or {})
        headers["X-Error-Message"] = message
        if code is not None:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status=status, headers=headers, pattern=pattern)

    def _unknown(self) -> None:
        pattern = f"? {self.command} {urlsplit(self.path).path}"
        logger.warning("hub stand-in: unhandled request %s %s", self.command, self.path)
        self.server.hub._note_unknown(f"{self.command} {self.path}")
        if self.command in ("GET", "HEAD"):
            self._error(HTTPStatus.NOT_FOUND, "Sorry, we can't find the page you are looking for.", pattern=pattern)
        else:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "This Hub stand-in is read-only.", pattern=pattern,
                        headers={"Allow": "GET, HEAD"})

    # ------------------------------------------------------------------ verbs
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_POST(self) -> None:  # noqa: N802
        self._drain_body()
        self._unknown()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._unknown()

    # ------------------------------------------------------------------ routing
    def _route(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path.startswith("/api/telemetry/"):
            self._send(HTTPStatus.OK, pattern=f"{self.command} /api/telemetry/...")
        elif path == "/api/agent-harnesses":  # registry used to tag the user agent: none known here
            self._json({"standardEnvVars": [], "harnesses": {}}, pattern=f"{self.command} {path}")
        elif path.startswith("/api/models/"):
            self._api_model(path[len("/api/models/"):], query)
        elif "/resolve/" in path and not path.startswith("/api/"):
            self._resolve(path[1:])
        else:
            self._unknown()

    def _api_model(self, rest: str, query: dict[str, list[str]]) -> None:
        method = self.command
        repo, tail = self.server.hub._match_repo(rest)
        if repo is None:
            pattern = f"{method} /api/models/{{repo_id}}..."
            return self._error(HTTPStatus.NOT_FOUND, "Repository not found", code="RepoNotFound", pattern=pattern)
        if tail in ("", "/") or tail.startswith("/revision/"):
            pattern = f"{method} /api/models/{{repo_id}}"
            revision = DEFAULT_BRANCH
            if tail.startswith("/revision/"):
                pattern += "/revision/{revision}"
                revision = unquote(tail[len("/revision/"):])
            if not repo.has_revision(revision):
                return self._error(HTTPStatus.NOT_FOUND, f"Invalid rev id: {revision}", code="RevisionNotFound",
                                   pattern=pattern)
            blobs = _flag(query, "blobs")
            expand = [value for values in query.get("expand", []) for value in values.split(",")] or None
            return self._json(repo.info(blobs=blobs, expand=expand), pattern=pattern)
        if tail.startswith("/tree/"):
            revision, _, sub = tail[len("/tree/"):].partition("/")
            revision, sub = unquote(revision), unquote(sub).strip("/")
            pattern = f"{method} /api/models/{{repo_id}}/tree/{{revision}}" + ("/{path}" if sub else "")
            if not repo.has_revision(revision):
                return self._error(HTTPStatus.NOT_FOUND, f"Invalid rev id: {revision}", code="RevisionNotFound",
                                   pattern=pattern)
            entries = repo.tree(sub, recursive=_flag(query, "recursive"), expand=_flag(query, "expand"))
            if entries is None:
                return self._error(HTTPStatus.NOT_FOUND, f"{sub} does not exist on {revision!r}",
                                   code="EntryNotFound", pattern=pattern)
            return self._json(entries, pattern=pattern)
        return self._unknown()

    def _resolve(self, rest: str) -> None:
        method = self.command
        pattern = f"{method} /{{repo_id}}/resolve/{{revision}}/{{path}}"
        repo, tail = self.server.hub._match_repo(rest)
        if repo is None or not tail.startswith("/resolve/"):
            return self._error(HTTPStatus.NOT_FOUND, "Repository not found", code="RepoNotFound", pattern=pattern)
        revision, _, filename = tail[len("/resolve/"):].partition("/")
        revision, filename = unquote(revision), unquote(filename)
        if not repo.has_revision(revision):
            return self._error(HTTPStatus.NOT_FOUND, f"Invalid rev id: {revision}", code="RevisionNotFound",
                               pattern=pattern)
        commit = {"X-Repo-Commit": repo.sha}
        file = repo.files.get(filename)
        if file is None:
            return self._error(HTTPStatus.NOT_FOUND, "Entry not found", code="EntryNotFound", headers=commit,
                               pattern=pattern)
        headers = {**commit, "ETag": f'"{file.etag}"', "Accept-Ranges": "bytes"}
        if file.lfs:
            headers.update({"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size)})
        content_type = mimetypes.guess_type(file.path)[0] or "application/octet-stream"
        start, end, status = 0, file.size, HTTPStatus.OK
        requested = self.headers.get("Range")
        if requested:
            match = _RANGE.match(requested.strip())
            if match is None or match.group(1) == match.group(2) == "":
                start = None
            elif match.group(1) == "":  # suffix range: the last N bytes
                start = max(file.size - int(match.group(2)), 0)
            else:
                start = int(match.group(1))
                end = min(int(match.group(2)) + 1, file.size) if match.group(2) else file.size
            if start is None or start >= max(file.size, 1) or start >= end:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, headers={
                    **headers, "Content-Range": f"bytes */{file.size}"}, content_type=content_type, pattern=pattern)
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"
        headers["Content-Length"] = str(end - start)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method == "GET":
            with open(file.local_path, "rb") as handle:
                handle.seek(start)
                remaining = end - start
                while remaining > 0:
                    chunk = handle.read(min(remaining, CHUNK_SIZE))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        self.server.hub._record(LoggedRequest(method, self.path, pattern, int(status)))


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return any(value.lower() in ("1", "true", "yes") for value in query.get(name, []))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """Serves ``{repo_id: folder}`` as model repos at `url` (``http://127.0.0.1:<ephemeral port>``)."""

    def __init__(self, repos: Mapping[str, str | os.PathLike]):
        if not repos:
            raise ValueError("serve at least one repo")
        self.repos = {repo_id: Repo(repo_id, folder) for repo_id, folder in repos.items()}
        self.requests: list[LoggedRequest] = []
        self.unknown: list[str] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "HubServer":
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hub-stand-in:{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and close the kept-alive connections (so no later request can succeed)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def patterns(self) -> list[str]:
        """The distinct request patterns received so far, in order of first appearance."""
        with self._lock:
            return list(dict.fromkeys(request.pattern for request in self.requests))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.unknown.clear()

    # ------------------------------------------------------------------ used by the handler
    def _match_repo(self, rest: str) -> tuple[Repo | None, str]:
        """Split ``"<repo_id><tail>"`` on the longest served repo id; ``(None, rest)`` if none matches."""
        for repo_id in sorted(self.repos, key=len, reverse=True):
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return self.repos[repo_id], rest[len(repo_id):]
        return None, rest

    def _record(self, request: LoggedRequest) -> None:
        logger.debug("hub stand-in: %s -> %d", request.path, request.status)
        with self._lock:
            self.requests.append(request)

    def _note_unknown(self, request: str) -> None:
        with self._lock:
            self.unknown.append(request)

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


@contextlib.contextmanager
def serve_repos(repos: Mapping[str, str | os.PathLike]) -> Iterator[HubServer]:
    """Serve ``{repo_id: folder}`` on 127.0.0.1 for the duration of the block; yields the `HubServer`
    (its base url is ``.url``)."""
    server = HubServer(repos)
    with server:
        yield server
