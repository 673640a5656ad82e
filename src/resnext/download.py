"""Bounded HTTP(S) fetching: every network read in the package goes through here.

Each fetch has a per-read socket time-out, an overall deadline (``RESNEXT_DOWNLOAD_DEADLINE`` seconds, or the
caller's; a server trickling one byte a second cannot hold a run forever) and a byte limit. A file is written to
a temporary name beside its destination (``.resnext-tmp-<pid>-...partial``) and renamed only once complete: its
length matches, its checksum matches when a sha256 is given, and the caller's ``verify`` (e.g. the zip CRCs of a
checkpoint) accepts it, so a body cut short never reaches the cache. Partial files of processes that no longer
run (a download killed with SIGKILL) are swept before each download into the same folder. Every cached file has a
``<file>.source.json`` record beside it: the URL it came from, its sha256 and size.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import DownloadError, ResnextError

DEFAULT_TIMEOUT_S = 60.0
#: Overall limits of one download (connection, headers and body) unless ``RESNEXT_DOWNLOAD_DEADLINE`` is set.
IMAGE_DEADLINE_S = 120.0
WEIGHTS_DEADLINE_S = 3600.0
DEADLINE_ENV = "RESNEXT_DOWNLOAD_DEADLINE"
MAX_WEIGHTS_BYTES = 2 * 1024**3
MAX_IMAGE_BYTES = 64 * 1024**2
SOURCE_SUFFIX = ".source.json"
_CHUNK = 1 << 20
_USER_AGENT = "resnext (+https://github.com/NVIDIA/DeepLearningExamples ConvNets port)"


def is_url(value: str | os.PathLike[str]) -> bool:
    return str(value).startswith(("http://", "https://"))


def deadline_s(default: float) -> float:
    """Seconds one download may take in all: ``$RESNEXT_DOWNLOAD_DEADLINE`` when set, else ``default``."""
    text = os.environ.get(DEADLINE_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ResnextError(f"{DEADLINE_ENV}={text!r} is not a positive number of seconds")
    return value


def url_file_name(url: str) -> str:
    """The file name a URL ends in (``.../x/w.pth?token=1`` -> ``w.pth``), reduced to safe characters.
    A URL without one (``http://host/dir/``, ``.../..``) is a :class:`DownloadError`."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    name = path.rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        raise DownloadError(f"{url} does not end in a file name; give the URL of the file itself")
    safe = "".join(c if c.isalnum() or c in "._-+" else "_" for c in name).lstrip(".")
    return safe[-120:] or "download"


def url_cache_name(url: str) -> str:
    """A cache file name unique to the full URL: ``url-<sha256 of the URL, 16 hex>-<file name>``, so two URLs
    with the same file name never share a file, and no URL can take the name of a published checkpoint."""
    return f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url_file_name(url)}"


class _Deadline:
    def __init__(self, url: str, seconds: float, timeout: float) -> None:
        self.url, self.seconds, self.timeout = url, seconds, timeout
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise DownloadError(
                f"{self.url}: download did not finish within {self.seconds:g} s (set {DEADLINE_ENV} to allow longer)"
            )
        return min(left, self.timeout)

    def arm(self, response: Any) -> None:
        """Shorten the socket's per-read time-out to what is left of the deadline."""
        sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            try:
                sock.settimeout(self.remaining())
            except OSError:
                pass

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def watch(self, connection: http.client.HTTPConnection) -> None:
        """Shut the connection's socket down when the deadline passes, whatever it is waiting for (a server that
        trickles its *headers* a byte at a time is otherwise bounded only by the per-read time-out)."""

        def cut() -> None:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(max(0.0, self.end - time.monotonic()), cut)
        timer.daemon = True
        timer.start()


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener, with every connection it makes watched by ``deadline``."""

    def watched(connection_class: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            connection = connection_class(host, **kwargs)
            connect = connection.connect

            def connect_and_watch() -> None:
                connect()
                deadline.watch(connection)

            connection.connect = connect_and_watch  # type: ignore[method-assign]
            return connection

        return make

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(watched(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context)  # type: ignore[attr-defined]

    return urllib.request.build_opener(Http, Https)


def _open(url: str, deadline: _Deadline):
    if not is_url(url):
        raise DownloadError(f"refusing to fetch {url!r}: only http:// and https:// URLs are supported")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return _opener(deadline).open(request, timeout=deadline.remaining())
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if deadline.expired() or isinstance(reason, TimeoutError) or "timed out" in str(reason):
            deadline.remaining()  # the deadline's own message when that is what ran out
        raise DownloadError(f"{url}: {reason or type(exc).__name__}") from exc


def _declared_length(response, url: str, max_bytes: int) -> int | None:
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    try:
        length = int(length)
    except ValueError:
        return None
    if length > max_bytes:
        raise DownloadError(f"{url}: size {length} bytes exceeds the limit of {max_bytes} bytes")
    return length


def _stream(response, deadline: _Deadline, max_bytes: int, sink: Callable[[bytes], None]) -> int:
    """Copy the body into ``sink`` within the deadline; return the byte count. ``read1`` returns whatever one
    socket read gives, so the deadline is checked at least once per per-read time-out, however slow the server."""
    url, received = deadline.url, 0
    while True:
        deadline.arm(response)
        try:
            chunk = response.read1(_CHUNK)
        except TimeoutError as exc:
            deadline.remaining()
            raise DownloadError(f"{url}: no data for {deadline.timeout:g} s after {received} bytes") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            deadline.remaining()  # a socket cut by the deadline's watchdog reports the deadline
            raise DownloadError(f"{url}: connection failed after {received} bytes ({exc!r})") from exc
        if not chunk:
            deadline.remaining()  # an end of data caused by the watchdog is no complete body
            return received
        received += len(chunk)
        if received > max_bytes:
            raise DownloadError(f"{url}: body exceeds the limit of {max_bytes} bytes")
        sink(chunk)
        deadline.remaining()


def fetch_bytes(
    url: str, *, timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int = MAX_IMAGE_BYTES, deadline: float | None = None
) -> bytes:
    """Return the body of ``url``; refuses bodies over ``max_bytes`` or slower than the deadline
    (``deadline`` s, default ``$RESNEXT_DOWNLOAD_DEADLINE`` or :data:`IMAGE_DEADLINE_S`)."""
    limit = _Deadline(url, deadline or deadline_s(IMAGE_DEADLINE_S), timeout)
    parts: list[bytes] = []
    with _open(url, limit) as response:
        expected = _declared_length(response, url, max_bytes)
        received = _stream(response, limit, max_bytes, parts.append)
    if expected is not None and received != expected:
        raise DownloadError(f"{url}: connection closed after {received} of {expected} bytes")
    return b"".join(parts)


def download_file(
    url: str,
    destination: str | os.PathLike[str],
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = MAX_WEIGHTS_BYTES,
    sha256: str | None = None,
    deadline: float | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``destination`` atomically, with a progress bar; return the destination path.

    ``verify(tmp_path)`` may raise to refuse the complete body before it is renamed into place (a
    :class:`~resnext.errors.ResnextError` passes through; other exceptions become a :class:`DownloadError`).
    """
    from .util import sweep_stale_temporaries, temporary_beside

    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(destination.parent)
        tmp = temporary_beside(destination, ".partial")
    except OSError as exc:
        raise DownloadError(f"cannot write into {destination.parent}: {exc.strerror or exc}") from exc
    limit = _Deadline(url, deadline or deadline_s(WEIGHTS_DEADLINE_S), timeout)
    try:
        with open(tmp, "wb") as out:
            digest = _download_into(out, url, destination.name, limit, max_bytes, progress)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}")
        _verify(verify, tmp, url)
        os.replace(tmp, destination)
        write_source_record(destination, url, digest.hexdigest())
    except OSError as exc:
        raise DownloadError(f"cannot write {destination}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return destination


def _download_into(out: IO[bytes], url: str, name: str, limit: _Deadline, max_bytes: int, progress: bool):
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with _open(url, limit) as response:
        expected = _declared_length(response, url, max_bytes)
        with tqdm(
            total=expected,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"downloading {name}",
            disable=not progress,
            leave=False,
        ) as bar:

            def sink(chunk: bytes) -> None:
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))

            received = _stream(response, limit, max_bytes, sink)
    if expected is not None and received != expected:
        raise DownloadError(f"{url}: connection closed after {received} of {expected} bytes")
    return digest


def _verify(verify: Callable[[Path], None] | None, path: Path, url: str) -> None:
    if verify is None:
        return
    try:
        verify(path)
    except ResnextError as exc:
        raise DownloadError(f"{url}: the downloaded file was refused and not cached: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to verify means: do not cache it
        raise DownloadError(f"{url}: the downloaded file is incomplete or damaged and was not cached ({exc})") from exc


def write_source_record(path: Path, url: str, sha256: str) -> Path:
    """``<path>.source.json``: where a cached file came from, its sha256 and size (written atomically)."""
    from .util import atomic_open

    record = Path(f"{path}{SOURCE_SUFFIX}")
    with atomic_open(record, "w", encoding="utf-8") as f:
        json.dump({"url": url, "sha256": sha256, "bytes": path.stat().st_size}, f, indent=1)
    return record


def read_source_record(path: Path) -> dict[str, Any] | None:
    """The record :func:`write_source_record` left beside ``path``, or ``None`` (a file placed by hand)."""
    try:
        record = json.loads(Path(f"{path}{SOURCE_SUFFIX}").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
