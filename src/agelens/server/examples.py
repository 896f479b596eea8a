"""Where the web page's example photos come from: a local folder or an S3 bucket prefix.

`AGELENS_EXAMPLES_DIR` is either a folder (`/srv/examples`) or `s3://bucket/prefix` (read with
boto3, `pip install 'agelens[s3]'`; credentials, region and endpoint come from the usual AWS
settings: environment variables, `~/.aws`, or the function's or pod's role). Only files directly
in the folder or under the prefix with a photo's suffix are offered, by bare file name.
"""

from __future__ import annotations

import logging
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agelens.errors import require_extra
from agelens.server.errors import ApiError

logger = logging.getLogger(__name__)

EXAMPLE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})


class ExamplesUnavailableError(ApiError):
    """The examples' storage (an S3 bucket) could not be read."""

    code = "examples_unavailable"


class ExampleNotFoundError(ApiError):
    """No example photo by that name."""

    code = "not_found"


def is_example_name(name: str) -> bool:
    """Whether `name` may name an example: a bare file name with a photo's suffix."""
    return (
        bool(name)
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
        and Path(name).suffix.lower() in EXAMPLE_SUFFIXES
    )


def media_type(name: str) -> str:
    """The content type of an example by its suffix."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class ExampleSource(Protocol):
    """A place example photos are listed and read from (blocking calls: run them on a
    worker thread)."""

    @property
    def description(self) -> str:
        """Where the examples are, for messages."""
        ...

    def names(self) -> list[str]:
        """The example photos' file names, sorted; ExamplesUnavailableError when unreadable."""
        ...

    def read(self, name: str, *, max_bytes: int) -> bytes:
        """One example's bytes; ExampleNotFoundError for an unknown or oversized name."""
        ...


@dataclass(frozen=True)
class FolderExamples:
    """Photos directly inside a local folder."""

    folder: Path

    @property
    def description(self) -> str:
        return f"the examples folder {self.folder.name!r}"

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name for p in self.folder.iterdir() if p.is_file() and is_example_name(p.name)
        )

    def read(self, name: str, *, max_bytes: int) -> bytes:
        candidate = self.folder / name
        if not is_example_name(name) or not candidate.is_file():
            raise ExampleNotFoundError(f"no example named {name!r}")
        if candidate.stat().st_size > max_bytes:
            raise ExampleNotFoundError(f"the example {name!r} is over {max_bytes} bytes")
        return candidate.read_bytes()


@dataclass
class S3Examples:
    """Photos directly under `prefix` in an S3 bucket (or any S3-compatible store)."""

    bucket: str
    prefix: str
    _client: Any = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return f"the examples bucket prefix s3://{self.bucket}/{self.prefix}"

    def client(self) -> Any:
        """The boto3 S3 client, made on first use (boto3 is imported only then)."""
        if self._client is None:
            require_extra("boto3", "s3")
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def names(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        names: list[str] = []
        try:
            pages = (
                self.client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/")
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(self.prefix) :]
                    if is_example_name(name):
                        names.append(name)
        except (BotoCoreError, ClientError) as error:
            logger.warning("could not list s3://%s/%s: %s", self.bucket, self.prefix, error)
            raise ExamplesUnavailableError(
                f"the examples in s3://{self.bucket}/{self.prefix} could not be listed: {error}"
            ) from error
        return sorted(names)

    def read(self, name: str, *, max_bytes: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if not is_example_name(name):
            raise ExampleNotFoundError(f"no example named {name!r}")
        try:
            answer = self.client().get_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise ExampleNotFoundError(f"no example named {name!r}") from error
            raise ExamplesUnavailableError(
                f"the example {name!r} could not be read: {error}"
            ) from error
        except BotoCoreError as error:
            raise ExamplesUnavailableError(
                f"the example {name!r} could not be read: {error}"
            ) from error
        body = answer["Body"]
        try:
            if int(answer.get("ContentLength", 0)) > max_bytes:
                raise ExampleNotFoundError(f"the example {name!r} is over {max_bytes} bytes")
            data: bytes = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ExampleNotFoundError(f"the example {name!r} is over {max_bytes} bytes")
        return data


def open_examples(location: str | None) -> ExampleSource | None:
    """The example source a setting names: `s3://bucket/prefix`, a folder, or None."""
    if not location:
        return None
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{location!r} names no bucket; write s3://bucket/prefix")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Examples(bucket, prefix)
    return FolderExamples(Path(location))
