"""Typed errors. Every message says what happened and what the caller can do next."""

from __future__ import annotations


class AgelensError(Exception):
    """Base class of every error agelens raises on purpose."""

    code = "agelens_error"


class ImageDecodeError(AgelensError):
    """The input is not an image agelens can decode (corrupt, truncated, unsupported, empty)."""

    code = "image_decode_error"


class ImageTooLargeError(ImageDecodeError):
    """The input exceeds the configured byte or pixel limit (guards against decompression bombs)."""

    code = "image_too_large"


class ModelNotFetchedError(AgelensError):
    """A model's files are not in the cache; `agelens models fetch` obtains them."""

    code = "model_not_fetched"


class ModelFetchError(AgelensError):
    """Obtaining a model from its package registry failed (client missing, registry unreachable,
    hash mismatch)."""

    code = "model_fetch_error"


class UnknownModelError(AgelensError, KeyError):
    """A model, detector or estimator name that is not registered."""

    code = "unknown_model"

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else self.code


class InvalidOptionError(AgelensError, ValueError):
    """An option that a detector or estimator does not have, or a value of the wrong type or
    out of range; the message names the valid ones."""

    code = "invalid_option"


class ResultsFileError(AgelensError):
    """A results file (Parquet, CSV or JSONL of agelens.rows) is missing, unreadable or lacks
    the columns of agelens.rows."""

    code = "results_file_error"


class MissingExtraError(AgelensError, ImportError):
    """An optional dependency group is not installed; the message names the pip command."""

    code = "missing_extra"


def require_extra(module: str, extra: str) -> None:
    """Import `module` or raise MissingExtraError naming `pip install 'agelens[extra]'`."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{module!r} is not installed; run: pip install 'agelens[{extra}]'"
        ) from error


class UrlForbiddenError(AgelensError):
    """The URL's scheme or resolved address is not allowed (private, loopback, metadata, ...)."""

    code = "url_forbidden"


class UrlFetchError(AgelensError):
    """Fetching the URL failed: unreachable, timeout, HTTP error, too large, not an image."""

    code = "url_fetch_error"


class BatchInputError(AgelensError):
    """A batch input (folder, glob, manifest or file given on the command line) does not exist,
    matches nothing, or a manifest cannot be read."""

    code = "batch_input_error"


class BatchOutputError(AgelensError):
    """The batch output cannot be written as asked: it exists already (pass --resume or
    --overwrite), its suffix names no known format, or a resume would mix incompatible runs."""

    code = "batch_output_error"


class VideoSourceError(AgelensError):
    """A video source cannot be opened: no such file, an empty file, not a video, a webcam that
    is absent, a stream that does not answer, or a URL the address rules forbid."""

    code = "video_source_error"


class VideoDecodeError(VideoSourceError):
    """A video broke off part way (corrupt or truncated): the frames before the damage were
    delivered, and `frames_read` says how many."""

    code = "video_decode_error"

    def __init__(self, message: str, frames_read: int = 0) -> None:
        super().__init__(message)
        self.frames_read = frames_read
