"""A local stand-in for the Hugging Face hub, for end-to-end tests of ``radar_gguf.hub``.

It speaks the part of the hub protocol that ``huggingface_hub`` (checked against 2.4, httpx2-based) uses to
list a repo and download files, so tests can point ``HF_ENDPOINT`` at it:

API server (``FakeHub.url``, what ``HF_ENDPOINT`` points to)
  GET /api/models/{repo_id}                        model_info: {"id", "sha", "siblings": [{"rfilename"}]}
  GET /api/models/{repo_id}/revision/{rev}         same, at a revision (``main`` or the commit sha); with
                                                   ``?blobs=true`` each sibling has size, blobId and, for
                                                   LFS files, ``lfs: {sha256, size, pointerSize}``
  GET /api/models/{repo_id}/tree/{rev}[/{path}]    list_repo_tree / list_repo_files (``?recursive=true``)
  GET /api/agent-harnesses                         an empty registry (huggingface_hub 2.x fetches it)
  HEAD|GET /{repo_id}/resolve/{rev}/{filename}     file metadata / download:
      regular (git) files: 200 with ``ETag`` (git blob sha1), ``X-Repo-Commit``, ``Content-Length``;
      LFS files (``*.gguf`` ...): 302 to the CDN server with ``X-Linked-Etag`` (sha256), ``X-Linked-Size``,
      ``X-Repo-Commit`` and ``Location``, like huggingface.co redirecting to its CDN.
CDN server (second port, so a different origin: huggingface_hub does not follow the redirect in its HEAD call
and drops the Authorization header, as with the real CDN)
  HEAD|GET /cdn/{repo_id}/{commit}/{filename}      the bytes; ``Accept-Ranges: bytes``, Range -> 206.

Errors carry the ``X-Error-Code`` headers that ``huggingface_hub.utils.hf_raise_for_status`` maps to its
exceptions: ``RepoNotFound`` (404 unknown repo, 401 private repo without a valid token), ``RevisionNotFound``,
``EntryNotFound`` (404, with ``X-Repo-Commit``), ``GatedRepo`` (401 on file downloads of a gated repo).

Fault injection / observation: :meth:`FakeHub.cut_next_download` makes the next download of a file stop after
N bytes (connection closed, once) to exercise resume; :meth:`FakeHub.serve_instead` makes the CDN serve other
bytes than the hub announces (size and sha256); :attr:`FakeHub.requests` logs every request on both
servers (method, path, headers, status), e.g. to prove that offline mode makes none.

Run ``python tests/hub_server.py`` to serve a small demo repo by hand.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".bin", ".safetensors")


@dataclass
class Request:
    """One request seen by the fake hub."""

    server: str  # "api" or "cdn"
    method: str
    path: str  # raw path with query string
    headers: dict
    status: int = 0


@dataclass
class _Cut:
    filename: Optional[str]
    after: int


@dataclass
class _Repo:
    repo_id: str
    files: dict
    sha: str = ""
    private_token: Optional[str] = None
    gated_token: Optional[str] = None
    extra_revisions: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.repo_id.encode())
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        self.sha = digest.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(filename: str) -> bool:
    return filename.lower().endswith(LFS_SUFFIXES)


class FakeHub:
    """Serve ``repos`` = ``{repo_id: {filename: bytes}}`` like the Hugging Face hub, on 127.0.0.1.

    Args:
        repos: the repos and their files (at revision ``main``; their commit id is a deterministic fake sha).
        private: ``{repo_id: token}``: the repo answers 401/RepoNotFound unless ``Authorization: Bearer token``.
        gated: ``{repo_id: token}``: listing works, file downloads answer 401/GatedRepo without that token.

    Use as a context manager (or call :meth:`start` / :meth:`stop`); :attr:`url` is the ``HF_ENDPOINT`` value.
    """

    def __init__(
        self,
        repos: Mapping[str, Mapping[str, bytes]],
        *,
        private: Optional[Mapping[str, str]] = None,
        gated: Optional[Mapping[str, str]] = None,
    ) -> None:
        private = dict(private or {})
        gated = dict(gated or {})
        self.repos = {
            repo_id: _Repo(
                repo_id, dict(files), private_token=private.get(repo_id), gated_token=gated.get(repo_id)
            )
            for repo_id, files in repos.items()
        }
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._cuts: list[_Cut] = []
        self.served: dict = {}  # (repo_id, filename) -> bytes the CDN serves instead of the real file
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.cdn_url = ""

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        for role in ("api", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub = self  # type: ignore[attr-defined]
            server.role = role  # type: ignore[attr-defined]
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-hub-{role}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test helpers ----------------------------------------------------------------------------------------
    def sha(self, repo_id: str) -> str:
        """The fake commit id of ``repo_id``."""
        return self.repos[repo_id].sha

    def cut_next_download(self, after: int, filename: Optional[str] = None) -> None:
        """Make the next GET of ``filename`` (any file if None) send ``after`` bytes of the body, then close
        the connection (once). Content-Length announces the full size, so the client sees a truncated body."""
        with self._lock:
            self._cuts.append(_Cut(filename, after))

    def serve_instead(self, repo_id: str, filename: str, data: bytes) -> None:
        """Make the CDN serve ``data`` for that file while the hub keeps announcing the real file's
        sha256 and size (a tampered mirror, a redirect to another host, a proxy that rewrites)."""
        self.served[(repo_id, filename)] = data

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def downloads(self, filename: Optional[str] = None) -> list[Request]:
        """GET requests that transferred file bytes (of ``filename`` if given)."""
        with self._lock:
            reqs = list(self.requests)
        out = []
        for req in reqs:
            if req.method != "GET" or req.status not in (200, 206):
                continue
            path = unquote(urlsplit(req.path).path)
            if not (path.startswith("/cdn/") or "/resolve/" in path):
                continue
            if filename is None or path.endswith("/" + filename):
                out.append(req)
        return out

    # ---- internals -------------------------------------------------------------------------------------------
    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_cut(self, filename: str) -> Optional[_Cut]:
        with self._lock:
            for cut in self._cuts:
                if cut.filename is None or cut.filename == filename:
                    self._cuts.remove(cut)
                    return cut
        return None


def _tree_entries(repo: _Repo, base: str, recursive: bool) -> list[dict]:
    prefix = base.strip("/") + "/" if base.strip("/") else ""
    files = {name: data for name, data in repo.files.items() if name.startswith(prefix)}
    entries: dict[str, dict] = {}
    for name, data in files.items():
        rel = name[len(prefix) :]
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if not recursive and depth > 1:
                break
            folder = prefix + "/".join(parts[:depth])
            entries.setdefault(
                folder, {"type": "directory", "oid": git_blob_sha1(folder.encode()), "path": folder}
            )
        if not recursive and len(parts) > 1:
            continue
        entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
        if is_lfs(name):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries[name] = entry
    return [entries[key] for key in sorted(entries)]


def _sibling(name: str, data: bytes, blobs: bool) -> dict:
    """One ``siblings`` entry of model_info; with ``?blobs=true`` (``files_metadata=True``): size, blob id and,
    for LFS files, the sha256 the client can check the download against."""
    entry: dict = {"rfilename": name}
    if blobs:
        entry.update(size=len(data), blobId=git_blob_sha1(data))
        if is_lfs(name):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    @property
    def role(self) -> str:
        return self.server.role  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # ---- responses -------------------------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes = b"", headers: Optional[Mapping[str, str]] = None, head: bool = False
    ):
        self._record.status = status
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(
        self, status: int, payload: object, headers: Optional[Mapping[str, str]] = None, head: bool = False
    ):
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        self._send(status, json.dumps(payload).encode(), all_headers, head=head)

    def _error(
        self, status: int, code: Optional[str], message: str, head: bool = False, **headers: str
    ) -> None:
        hdrs = {"X-Error-Message": message, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if code:
            hdrs["X-Error-Code"] = code
        self._json(status, {"error": message}, hdrs, head=head)

    # ---- routing ---------------------------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        self._record = Request(self.role, self.command, self.path, dict(self.headers.items()))
        self.hub._log(self._record)
        try:
            path = urlsplit(self.path).path
            segments = path.lstrip("/").split("/")
            if self.role == "cdn":
                return self._cdn(segments, head)
            if segments == ["api", "agent-harnesses"]:  # fetched by huggingface_hub's agent detection
                return self._json(200, {"standardEnvVars": [], "harnesses": {}}, head=head)
            if segments[:2] == ["api", "models"] and len(segments) >= 4:
                return self._api(segments[2:], head)
            if len(segments) >= 5 and segments[2] == "resolve":
                return self._resolve(segments, head)
            self._error(404, None, "Not found", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo(self, repo_id: str, head: bool) -> Optional[_Repo]:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head=head)
            return None
        if repo.private_token and self.headers.get("Authorization") != f"Bearer {repo.private_token}":
            self._error(401, "RepoNotFound", "Invalid username or password.", head=head)
            return None
        return repo

    def _revision_ok(self, repo: _Repo, revision: str, head: bool) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        return False

    def _api(self, rest: list[str], head: bool) -> None:
        repo_id = unquote(rest[0]) + "/" + unquote(rest[1])
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        tail = rest[2:]
        query = urlsplit(self.path).query
        if not tail or (tail[0] == "revision" and len(tail) >= 2):
            revision = unquote("/".join(tail[1:])) if tail else "main"
            if not self._revision_ok(repo, revision, head):
                return
            info: dict = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.sha,
                "private": bool(repo.private_token),
            }
            info["gated"] = "manual" if repo.gated_token else False
            blobs = "blobs=true" in query.lower()
            info["siblings"] = [_sibling(name, data, blobs) for name, data in sorted(repo.files.items())]
            return self._json(200, info, head=head)
        if tail[0] == "tree" and len(tail) >= 2:
            revision = unquote(tail[1])
            base = unquote("/".join(tail[2:]))
            if not self._revision_ok(repo, revision, head):
                return
            entries = _tree_entries(repo, base, recursive="recursive=true" in query.lower())
            if base and not entries:
                return self._error(
                    404, "EntryNotFound", f"{base} does not exist", head=head, X_Repo_Commit=repo.sha
                )
            return self._json(200, entries, head=head)
        self._error(404, None, "Not found", head=head)

    def _resolve(self, segments: list[str], head: bool) -> None:
        repo_id = unquote(segments[0]) + "/" + unquote(segments[1])
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        revision = unquote(segments[3])
        filename = unquote("/".join(segments[4:]))
        if not self._revision_ok(repo, revision, head):
            return
        if repo.gated_token and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(401, "GatedRepo", msg, head=head)
        data = repo.files.get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", head=head, X_Repo_Commit=repo.sha)
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if is_lfs(filename):
            location = f"{self.hub.cdn_url}/cdn/{quote(repo_id)}/{repo.sha}/{quote(filename)}"
            headers = {
                **common,
                "Location": location,
                "ETag": f'"{git_blob_sha1(data)}"',
                "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Linked-Size": str(len(data)),
            }
            return self._send(302, b"", headers, head=head)
        self._serve_bytes(filename, data, {**common, "ETag": f'"{git_blob_sha1(data)}"'}, head)

    def _cdn(self, segments: list[str], head: bool) -> None:
        if len(segments) < 5 or segments[0] != "cdn":
            return self._error(404, None, "Not found", head=head)
        repo = self.hub.repos.get(unquote(segments[1]) + "/" + unquote(segments[2]))
        filename = unquote("/".join(segments[4:]))
        if repo is None or segments[3] != repo.sha or filename not in repo.files:
            return self._error(404, None, "NoSuchKey", head=head)
        data = self.hub.served.get((repo.repo_id, filename), repo.files[filename])
        self._serve_bytes(filename, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, head)

    def _serve_bytes(self, filename: str, data: bytes, headers: dict, head: bool) -> None:
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start, end, status = 0, len(data) - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            m = _RANGE_RE.match(range_header.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
                else:  # suffix range: last N bytes
                    start = max(len(data) - int(m.group(2)), 0)
                if start >= len(data) or start > end:
                    headers["Content-Range"] = f"bytes */{len(data)}"
                    return self._send(416, b"", headers, head=head)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        cut = None if head else self.hub._take_cut(filename)
        if cut is None or cut.after >= len(body):
            return self._send(status, body, headers, head=head)
        # announce the full body, send part of it, then drop the connection
        self._record.status = status
        self.send_response(status)
        headers["Content-Length"] = str(len(body))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[: cut.after])
        self.wfile.flush()
        self.close_connection = True


def demo_repos() -> dict:
    """A few fake repos, for running the server by hand."""
    return {
        "demo/tiny-GGUF": {
            "README.md": b"# tiny\n",
            "tiny-Q4_K_M.gguf": b"GGUF" + b"\x01" * 1000,
            "tiny-Q8_0.gguf": b"GGUF" + b"\x02" * 2000,
        },
    }


def main(argv: Optional[Iterable[str]] = None) -> None:  # pragma: no cover - manual use
    import time

    with FakeHub(demo_repos()) as hub:
        print(f"HF_ENDPOINT={hub.url}  (CDN at {hub.cdn_url}); repos: {', '.join(hub.repos)}; Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
