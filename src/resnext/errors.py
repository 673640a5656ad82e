"""Exceptions for mistakes a user can fix. The CLI prints their message as one line and exits non-zero."""


class ResnextError(Exception):
    """Base class: the message is a complete sentence meant for the user, no traceback needed."""


class WeightsError(ResnextError):
    """A checkpoint could not be fetched, read, or matched to the model."""


class ImageError(ResnextError):
    """An input could not be decoded as an image, or is refused (too large, not an image)."""


class DownloadError(ResnextError):
    """A URL could not be fetched within its time and size limits."""
