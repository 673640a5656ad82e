"""``hf-hub:owner/name[@revision]`` sources: a folder in timm's Hub layout (:mod:`resnext.model.hf`) on the Hugging
Face Hub, fetched by ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and ``HF_ENDPOINT``) within our
download limits, each file checked against the hash the Hub announced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from ..download import DEADLINE_ENV, MAX_WEIGHTS_BYTES, WEIGHTS_DEADLINE_S, deadline_s
from ..errors import WeightsError, first_line
from ..util import file_digest
from .hf import CONFIG_FILE, FOLDER_WEIGHTS

HF_HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def is_hf_hub(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(HF_HUB_PREFIX)


def parse_hf_hub(source: str) -> tuple[str, str | None]:
    """``"hf-hub:owner/name@rev"`` -> ``("owner/name", "rev")``; a malformed id is a one-line error."""
    repo_id, _, revision = source[len(HF_HUB_PREFIX) :].partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or (_ and not revision):
        raise WeightsError(f"{source!r} is not a Hub model id; write hf-hub:owner/name or hf-hub:owner/name@revision")
    return repo_id, revision or None


def fetch_hf_hub(source: str) -> Path:
    """Download (or find in ``huggingface_hub``'s cache) the weights file and ``config.json`` of
    ``hf-hub:owner/name[@revision]``; return the snapshot folder that holds them.

    ``huggingface_hub`` handles the cache (``HF_HUB_CACHE``), offline mode (``HF_HUB_OFFLINE=1``: the cache only),
    the token (``HF_TOKEN`` or ``hf auth login``) and the endpoint (``HF_ENDPOINT``). Each file is checked against
    the hash the Hub announced for it (sha256 for LFS files, the git blob hash for small ones): a mismatch removes
    the file from the cache and is an error. Our download limits hold: a file declared over ``MAX_WEIGHTS_BYTES``
    is refused before its body is asked for, and the whole fetch has the weights deadline (:func:`_within_deadline`).
    """
    repo_id, revision = parse_hf_hub(source)
    try:
        import huggingface_hub
        from huggingface_hub.errors import RemoteEntryNotFoundError
    except ImportError as exc:
        raise WeightsError(f"{source} needs huggingface_hub: pip install 'resnext[hf]'") from exc

    def download(filename: str) -> Path | None:
        try:
            # the metadata first (the same HEAD, cache and offline rules as the download itself)
            planned = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, dry_run=True)
            if planned.will_download and (planned.file_size or 0) > MAX_WEIGHTS_BYTES:
                raise WeightsError(
                    f"{filename} of {source} is {planned.file_size:,} bytes, over the download limit of "
                    f"{MAX_WEIGHTS_BYTES:,} bytes"
                )
            path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
        except RemoteEntryNotFoundError:  # the Hub says it has no such file (offline "not cached" is an error)
            return None
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo/revision, HTTP errors: one line each
            raise WeightsError(
                f"could not get {filename} of {source}: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        _verify_cached_file(Path(path), source)
        return Path(path)

    def fetch() -> Path:
        weights = next((path for name in FOLDER_WEIGHTS if (path := download(name)) is not None), None)
        if weights is None:
            raise WeightsError(f"{source} has no {' or '.join(FOLDER_WEIGHTS)} at revision {revision or 'main'}")
        download(CONFIG_FILE)  # optional: timm's layout has one, a bare weights repo may not
        return weights.parent

    return _within_deadline(fetch, source)


def _within_deadline(fetch: Callable[[], Path], source: str) -> Path:
    """``fetch()``, waited for at most the weights download deadline. huggingface_hub's time-outs bound each read,
    not the transfer (a server trickling a byte at a time would hold the run forever), so the fetch runs in a daemon
    thread; past the deadline the caller gets a one-line error, and the abandoned thread ends with its connection
    (its ``.incomplete`` file never becomes a cache entry)."""
    seconds = deadline_s(WEIGHTS_DEADLINE_S)
    done: Future[Path] = Future()

    def run() -> None:
        try:
            done.set_result(fetch())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            done.set_exception(exc)

    threading.Thread(target=run, name=f"resnext fetch {source}", daemon=True).start()
    if not wait([done], timeout=seconds).done:
        raise WeightsError(
            f"{source}: download did not finish within {seconds:g} s (set {DEADLINE_ENV} to allow longer)"
        )
    return done.result()


def _verify_cached_file(path: Path, source: str) -> None:
    """Hash ``path`` against its blob's name in the cache, which is the ETag the Hub announced for it."""
    blob = Path(os.path.realpath(path))
    etag = blob.name
    if _SHA256.fullmatch(etag):
        digest = hashlib.sha256()
    elif _GIT_SHA1.fullmatch(etag):
        digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode(), usedforsecurity=False)
    else:
        return  # a cache without symlinks (HF_HUB_DISABLE_SYMLINKS, some Windows setups) keeps no hash to check
    if file_digest(blob, digest) != etag:
        for stale in (path, blob):
            with contextlib.suppress(OSError):
                stale.unlink()
        raise WeightsError(
            f"{path.name} of {source} does not match the hash the Hub announced ({etag[:16]}...): damaged or "
            f"tampered in transfer; removed it from the cache"
        )
