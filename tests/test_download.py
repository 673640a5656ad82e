"""Bounded, atomic fetching (loopback servers only)."""

from __future__ import annotations

import hashlib

import pytest

from resnext.download import download_file, fetch_bytes, read_source_record
from resnext.errors import DownloadError

BODY = bytes(range(256)) * 4096  # 1 MiB


def test_download_file_writes_atomically_and_checks_sha256(tmp_path, http_server) -> None:
    base, _ = http_server({"/w.bin": BODY})
    good = hashlib.sha256(BODY).hexdigest()
    path = download_file(f"{base}/w.bin", tmp_path / "cache" / "w.bin", progress=False, sha256=good.upper())
    assert path.read_bytes() == BODY and sorted(p.name for p in path.parent.iterdir()) == ["w.bin", "w.bin.source.json"]
    assert read_source_record(path) == {"url": f"{base}/w.bin", "sha256": good, "bytes": len(BODY)}


def test_downloaded_file_gets_the_permissions_of_a_plain_write(tmp_path, http_server) -> None:
    """Other users of a shared cache can read it: not the 0600 of the temporary file it was written through."""
    base, _ = http_server({"/w.bin": BODY})
    path = download_file(f"{base}/w.bin", tmp_path / "w.bin", progress=False)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 != 0o600


def test_sha256_mismatch_is_refused_and_leaves_nothing(tmp_path, http_server) -> None:
    base, _ = http_server({"/w.bin": BODY})
    with pytest.raises(DownloadError, match="sha256 .* does not match"):
        download_file(f"{base}/w.bin", tmp_path / "w.bin", progress=False, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["normal", "no-length"])
def test_size_limit_is_enforced_with_and_without_content_length(tmp_path, http_server, mode) -> None:
    base, _ = http_server({"/w.bin": BODY}, mode=mode)
    with pytest.raises(DownloadError, match="limit"):
        download_file(f"{base}/w.bin", tmp_path / "w.bin", progress=False, max_bytes=len(BODY) // 3)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="limit"):
        fetch_bytes(f"{base}/w.bin", max_bytes=len(BODY) // 3)


def test_download_without_content_length_still_completes(tmp_path, http_server) -> None:
    base, _ = http_server({"/w.bin": BODY}, mode="no-length")
    assert download_file(f"{base}/w.bin", tmp_path / "w.bin", progress=False).read_bytes() == BODY


def test_connection_cut_half_way(tmp_path, http_server) -> None:
    base, _ = http_server({"/w.bin": BODY}, mode="cut")
    with pytest.raises(DownloadError, match=f"connection closed after {len(BODY) // 2} of {len(BODY)} bytes"):
        download_file(f"{base}/w.bin", tmp_path / "w.bin", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="connection closed"):
        fetch_bytes(f"{base}/w.bin")


def test_http_errors_and_schemes(http_server, tmp_path) -> None:
    base, _ = http_server({})
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_bytes(f"{base}/missing.jpg")
    with pytest.raises(DownloadError, match="only http"):
        fetch_bytes(f"file://{tmp_path}")


def test_fetch_bytes(http_server) -> None:
    base, _ = http_server({"/a": b"abc"})
    assert fetch_bytes(f"{base}/a") == b"abc"


def test_a_server_trickling_its_headers_is_cut_at_the_deadline(tmp_path) -> None:
    """The overall deadline also bounds the status line and headers, not only the body (a byte every 0.2 s
    never trips a per-read time-out)."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.is_set():
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/slow.bin"
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="did not finish within 1 s"):
            fetch_bytes(url, deadline=1.0, timeout=30.0)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        server.close()
        thread.join(timeout=5)
