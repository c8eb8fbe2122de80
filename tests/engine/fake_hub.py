"""A local stand-in for the Hugging Face Hub's file endpoints (stdlib http.server on 127.0.0.1), serving model
repositories from folders, for `python -m engine pull` and `hf:` model paths with HF_ENDPOINT pointing at it.

What huggingface_hub 2.4 asks (read from its source): `GET /api/models/{repo}/revision/{rev}?blobs=True`
(`HfApi.model_info(files_metadata=True)`: commit `sha` and `siblings` with size, blobId and, for LFS files,
`lfs.sha256`), then `GET /{repo}/resolve/{commit}/{path}` with `Range: bytes=N-` when resuming. Small files are
served directly with ETag = git blob id; LFS files (ONNX graphs and their data) redirect (302) to a CDN path with
X-Linked-Etag / X-Linked-Size, as the Hub does. Every response carries X-Repo-Commit; errors carry X-Error-Code.

Faults for tests: `drop_once[path] = n` sends n bytes of the file and closes the connection once (the next
request for that file then fails with 500 once, so the pull ends with a partial file); counters of bytes
served per file, the requests (with their Range and Authorization headers).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_PATTERN = re.compile(r"(\.onnx$|\.onnx_data|\.onnx\.data|\.bin$|\.weights$)")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    folder: Path
    commit: str

    def files(self) -> dict[str, Path]:
        return {p.relative_to(self.folder).as_posix(): p for p in sorted(self.folder.rglob("*")) if p.is_file()}

    def sibling(self, path: str, file: Path) -> dict[str, object]:
        data = file.read_bytes()
        entry: dict[str, object] = {"rfilename": path, "size": len(data)}
        if LFS_PATTERN.search(path):
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
            entry.update(
                blobId=git_blob_id(pointer), lfs={"sha256": sha256, "size": len(data), "pointerSize": len(pointer)}
            )
        else:
            entry["blobId"] = git_blob_id(data)
        return entry


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # body bytes sent per repository file path
    drop_once: dict[str, int] = field(default_factory=dict)
    fail_once: set[str] = field(default_factory=set)
    url: str = ""

    def add(self, repo_id: str, folder: Path, commit: str = "c0ffee" * 6 + "abcd") -> Repo:
        repo = Repo(repo_id, folder, commit)
        self.repos[repo_id] = repo
        return repo

    def downloads(self) -> set[str]:
        """Repository paths whose bytes were served (resolve or CDN)."""
        return {path for path, count in self.served.items() if count > 0}

    # ---- the server
    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- handlers
    def _handle(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        self.requests.append(
            Request(handler.command, path, handler.headers.get("Range"), handler.headers.get("Authorization"))
        )
        api = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/(.+))?$", path)
        if api:
            self._model_info(handler, api.group(1), api.group(2) or "main")
            return
        cdn = re.match(r"^/cdn/([^/]+/[^/]+)/(.+)$", path)
        if cdn:
            repo = self.repos.get(cdn.group(1))
            if repo is None or cdn.group(2) not in repo.files():
                self._error(handler, 404, "EntryNotFound")
                return
            self._file(handler, repo, cdn.group(2), body)
            return
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not resolve:
            self._error(handler, 404, None)
            return
        repo = self.repos.get(resolve.group(1))
        if repo is None:
            self._error(handler, 401, "RepoNotFound")
            return
        if resolve.group(2) not in ("main", repo.commit):
            self._error(handler, 404, "RevisionNotFound", repo)
            return
        name = resolve.group(3)
        files = repo.files()
        if name not in files:
            self._error(handler, 404, "EntryNotFound", repo)
            return
        sibling = repo.sibling(name, files[name])
        if "lfs" in sibling:  # large files: a redirect to the CDN, as the Hub does
            lfs = sibling["lfs"]
            assert isinstance(lfs, dict)
            handler.send_response(302)
            handler.send_header("Location", f"{self.url}/cdn/{repo.repo_id}/{name}")
            handler.send_header("X-Repo-Commit", repo.commit)
            handler.send_header("X-Linked-Etag", f'"{lfs["sha256"]}"')
            handler.send_header("X-Linked-Size", str(lfs["size"]))
            handler.send_header("ETag", f'"{sibling["blobId"]}"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        self._file(handler, repo, name, body)

    def _model_info(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(handler, 401, "RepoNotFound")
            return
        if revision not in ("main", repo.commit):
            self._error(handler, 404, "RevisionNotFound", repo)
            return
        siblings = [repo.sibling(path, file) for path, file in repo.files().items()]
        payload = json.dumps({"id": repo_id, "sha": repo.commit, "private": False, "siblings": siblings}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _file(self, handler: BaseHTTPRequestHandler, repo: Repo, name: str, body: bool) -> None:
        data = repo.files()[name].read_bytes()
        sibling = repo.sibling(name, repo.files()[name])
        etag = sibling["lfs"]["sha256"] if "lfs" in sibling else sibling["blobId"]  # type: ignore[index]
        if name in self.fail_once and body:
            self.fail_once.discard(name)
            self._error(handler, 500, None, repo)
            return
        start = 0
        requested = handler.headers.get("Range")
        if requested:
            match = re.match(r"^bytes=(\d+)-$", requested.strip())
            assert match, f"unexpected Range {requested!r}"
            start = int(match.group(1))
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        handler.send_response(206 if requested else 200)
        handler.send_header("Content-Length", str(len(data) - start))
        if requested:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", f'"{etag}"')
        handler.send_header("X-Repo-Commit", repo.commit)
        handler.end_headers()
        if not body:
            return
        chunk = data[start:]
        if name in self.drop_once:
            cut = self.drop_once.pop(name)
            self.fail_once.add(name)  # the client's immediate retry fails too: the pull ends, the partial stays
            handler.wfile.write(chunk[:cut])
            handler.wfile.flush()
            self.served[name] += cut
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.wfile.write(chunk)
        self.served[name] += len(chunk)

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str | None, repo: Repo | None = None) -> None:
        payload = json.dumps({"error": code or "error"}).encode()
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
        if repo is not None:
            handler.send_header("X-Repo-Commit", repo.commit)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
