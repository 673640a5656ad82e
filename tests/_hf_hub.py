"""A loopback stand-in for the Hugging Face Hub's file endpoint, for the real ``huggingface_hub`` client.

``hf_hub_download`` asks ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}`` for the file's metadata and
then ``GET``s the same URL. The Hub answers with ``X-Repo-Commit`` (the commit the revision resolves to), an
``ETag`` (the git blob sha1 of a small file) and, for LFS files, ``X-Linked-Etag`` (the sha256 of the content) and
``X-Linked-Size``; errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), which
the client turns into its typed exceptions. This server does the same for a few repositories held in memory.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.parse
from dataclasses import dataclass, field

#: files the Hub stores in LFS (their ETag is the sha256 of the content)
LFS_SUFFIXES = (".safetensors", ".bin", ".pth")


def commit_of(repo_id: str, revision: str) -> str:
    """A stable 40-hex commit id for a revision name."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubState:
    #: repo id -> revision name -> file name -> content
    repos: dict[str, dict[str, dict[str, bytes]]]
    #: file names whose announced hash is deliberately wrong (a tampered or damaged transfer)
    bad_hash: set[str] = field(default_factory=set)
    #: file name -> the size the metadata (HEAD) announces instead of the true one (a file too big to fetch)
    declared_size: dict[str, int] = field(default_factory=dict)
    #: file names whose body is sent a byte every 50 ms until ``stopped`` is set (a trickling server), then refused
    trickle: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Authorization)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def find(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        for name, files in self.repos.get(repo_id, {}).items():
            if revision in (name, commit_of(repo_id, name)):
                return commit_of(repo_id, name), files
        return None


class _HubHandler(http.server.BaseHTTPRequestHandler):
    state: HubState

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        with self.state.lock:
            self.state.requests.append((self.command, path, self.headers.get("Authorization")))
        parts = path.lstrip("/").split("/", 4)
        if len(parts) != 5 or parts[2] != "resolve":
            self._error(404, "EntryNotFound")
            return
        repo_id = f"{parts[0]}/{parts[1]}"
        revision, filename = urllib.parse.unquote(parts[3]), urllib.parse.unquote(parts[4])
        if repo_id not in self.state.repos:
            self._error(401, "RepoNotFound")
            return
        found = self.state.find(repo_id, revision)
        if found is None:
            self._error(404, "RevisionNotFound")
            return
        commit, files = found
        data = files.get(filename)
        if data is None:
            self._error(404, "EntryNotFound", commit)
            return
        if body and filename in self.state.trickle and self.state.stopped.is_set():
            self._error(503, "ServiceUnavailable", commit)  # not retried by the client: its download ends
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        if filename.endswith(LFS_SUFFIXES):
            announced = data + b"tampered" if filename in self.state.bad_hash else data
            sha256 = hashlib.sha256(announced).hexdigest()
            self.send_header("ETag", f'"{sha256}"')
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            size = self.state.declared_size.get(filename, len(data)) if self.command == "HEAD" else len(data)
            self.send_header("X-Linked-Size", str(size))
        else:
            self.send_header("ETag", f'"{git_blob_sha1(data)}"')
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and filename in self.state.trickle:
            for start in range(len(data)):
                if self.state.stopped.wait(0.05):
                    return
                self.wfile.write(data[start : start + 1])
        elif body:
            for start in range(0, len(data), 1 << 20):
                self.wfile.write(data[start : start + (1 << 20)])

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        message = f"{code}: {self.path}".encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(message)

    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


class LoopbackHub:
    """``with LoopbackHub(state) as hub:`` serves ``state`` on 127.0.0.1 at ``hub.endpoint`` until closed."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        handler = type("Handler", (_HubHandler,), {"state": state})
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.state.stopped.set()  # ends trickling answers
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)

    def __enter__(self) -> LoopbackHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
