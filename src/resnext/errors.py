"""Exceptions for mistakes a user can fix. The CLI prints their message as one line and exits non-zero.

A library error keeps what caused it (``raise ... from exc``): ``__cause__`` for callers, ``resnext -v`` prints the
chain; the message alone stays one line, with :func:`first_line` of a third-party error where it quotes one.
"""


class ResnextError(Exception):
    """Base class: the message is a complete sentence meant for the user, no traceback needed."""


class WeightsError(ResnextError):
    """A checkpoint could not be fetched, read, or matched to the model."""


class ImageError(ResnextError):
    """An input could not be decoded as an image, or is refused (too large, not an image)."""


class DownloadError(ResnextError):
    """A URL could not be fetched within its time and size limits."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``error``'s message, at most ``limit`` characters, or its type name when the
    message is empty: third-party errors (onnxruntime, OpenVINO, torch, pyarrow) carry multi-line C++ traces,
    and a message quoting one must stay one line."""
    text = str(error).strip()
    return (text.splitlines()[0].strip() if text else type(error).__name__)[:limit]
