"""Bounded HTTP(S) fetching: every network read in the package goes through here.

Each fetch has a socket time-out and a byte limit, and a file is written to a temporary name beside its
destination and renamed only once complete (and checksum-verified when a sha256 is given), so an interrupted
download never leaves a partial file where a cache lookup would find it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DownloadError

DEFAULT_TIMEOUT_S = 60.0
MAX_WEIGHTS_BYTES = 2 * 1024**3
MAX_IMAGE_BYTES = 64 * 1024**2
_CHUNK = 1 << 20
_USER_AGENT = "resnext (+https://github.com/NVIDIA/DeepLearningExamples ConvNets port)"


def is_url(value: str | os.PathLike[str]) -> bool:
    return str(value).startswith(("http://", "https://"))


def _open(url: str, timeout: float):
    if not is_url(url):
        raise DownloadError(f"refusing to fetch {url!r}: only http:// and https:// URLs are supported")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: {reason or type(exc).__name__}") from None


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


def fetch_bytes(url: str, *, timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Return the body of ``url``; refuses bodies over ``max_bytes`` and raises :class:`DownloadError`."""
    with _open(url, timeout) as response:
        expected = _declared_length(response, url, max_bytes)
        try:
            data = response.read(max_bytes + 1)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise DownloadError(f"{url}: connection failed mid-transfer ({exc!r})") from None
    if len(data) > max_bytes:
        raise DownloadError(f"{url}: body exceeds the limit of {max_bytes} bytes")
    if expected is not None and len(data) != expected:
        raise DownloadError(f"{url}: connection closed after {len(data)} of {expected} bytes")
    return data


def download_file(
    url: str,
    destination: str | os.PathLike[str],
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = MAX_WEIGHTS_BYTES,
    sha256: str | None = None,
) -> Path:
    """Download ``url`` to ``destination`` atomically, with a progress bar; return the destination path."""
    from tqdm.auto import tqdm

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
    digest = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, _open(url, timeout) as response:
            expected = _declared_length(response, url, max_bytes)
            with tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {destination.name}",
                disable=not progress, leave=False,
            ) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        raise DownloadError(f"{url}: connection failed after {received} bytes ({exc!r})") from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(f"{url}: body exceeds the limit of {max_bytes} bytes")
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if expected is not None and received != expected:
                raise DownloadError(f"{url}: connection closed after {received} of {expected} bytes")
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}")
        os.replace(tmp_name, destination)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return destination
