"""Every setting of the service, in one class, read from `AGELENS_*` environment variables.

The defaults are safe for a laptop: bound to loopback, no keys needed there, URL input limited to
public addresses, modest body and pixel limits, CORS off. Anything bound elsewhere needs keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agelens.imaging import DEFAULT_MAX_PIXELS
from agelens.models.backends import DEFAULT_DETECTOR, DEFAULT_ESTIMATOR

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def hash_api_key(key: str) -> str:
    """The sha256 hex digest under which an API key is stored (keys themselves never are)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _default_data_dir() -> Path:
    from platformdirs import user_data_path

    return user_data_path("agelens")


def _split_list(value: object) -> object:
    """Comma-separated strings (how lists arrive from the environment) become lists."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Service settings. Each field `x` is read from the environment variable `AGELENS_X`.

    List fields take comma-separated values, e.g.
    `AGELENS_API_KEY_HASHES=3f2a...,9bc1...` or `AGELENS_CORS_ORIGINS=https://app.example`.
    """

    model_config = SettingsConfigDict(env_prefix="AGELENS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    insecure: bool = Field(
        default=False, description="Allow serving on a non-loopback address without API keys."
    )

    # --- models
    detector: str = DEFAULT_DETECTOR
    estimator: str = DEFAULT_ESTIMATOR
    threads: int | None = Field(default=None, ge=1, description="ONNX Runtime intra-op threads.")

    # --- authentication: keys are stored as sha256 digests; plain keys are hashed on load
    api_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Plain keys (hashed at start-up and then forgotten); prefer api_key_hashes.",
        repr=False,
    )
    basic_auth_username: str | None = Field(
        default=None,
        description="The user name HTTP basic auth must carry on `/predict` (the password is an "
        "API key); unset, any user name is accepted with a valid key.",
    )

    # --- limits
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_batch_images: int = Field(default=16, ge=1)
    rate_limit_per_minute: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per API key (or client address); 0 = off.",
    )

    auth_failures_per_minute: int = Field(
        default=20,
        ge=0,
        description="Failed authentications a minute from one client address before it gets "
        "429 for a while; 0 = off.",
    )

    # --- URL input
    url_fetch_enabled: bool = True
    url_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    url_timeout_seconds: float = Field(default=10.0, gt=0)
    url_max_redirects: int = Field(default=3, ge=0)
    url_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks exempt from the public-address rule (e.g. an internal image store).",
    )

    # --- throughput: micro-batching of concurrent requests
    batch_window_ms: float = Field(default=5.0, ge=0)
    batch_max_images: int = Field(default=16, ge=1)
    queue_size: int = Field(default=64, ge=1)
    inference_workers: int = Field(default=1, ge=1, description="Batches run side by side.")
    request_timeout_seconds: float = Field(default=60.0, gt=0)
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A connection's request headers must be in by then."
    )
    body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A POST body must be in by then (408 `request_timeout` otherwise).",
    )
    keep_alive_seconds: float = Field(
        default=5.0, gt=0, description="Idle keep-alive connections are closed after this."
    )
    max_connections: int = Field(
        default=1000, ge=1, description="Open connections; beyond, requests get a plain 503."
    )
    max_decoded_bytes: int = Field(
        default=1_500_000_000,
        ge=1,
        description="Memory all decoded images together may hold (width x height x 4 bytes "
        "each, read from the header before decoding); an image that does not fit now gets 503 "
        "`overloaded` + Retry-After, one larger than this gets 413 `image_too_large`.",
    )
    max_requests_in_flight: int = Field(
        default=16,
        ge=1,
        description="POST requests being read, decoded or analysed at once; one more gets "
        "503 `overloaded` + Retry-After at once, before its body is read.",
    )

    # --- web
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    examples_dir: str | None = Field(
        default=None,
        description="Example photos shown on the web page: a folder, or s3://bucket/prefix "
        "(pip install 'agelens[s3]').",
    )

    # --- jobs API (/v1/jobs): a queue in an embedded database, worked through in the background
    jobs_enabled: bool = True
    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        description="Where the service keeps its own files: the jobs database and the images "
        "of zip jobs until they end.",
    )
    jobs_database_url: str | None = Field(
        default=None,
        description="default sqlite:///<data_dir>/jobs.sqlite3; or postgresql://user:password@"
        "host:port/database (pip install 'agelens[postgres]'), which several replicas may share",
    )
    jobs_result_ttl_s: float = Field(
        default=7 * 24 * 3600.0, ge=0, description="Seconds a finished job's results are kept."
    )
    jobs_max_images: int = Field(default=1000, ge=1, description="URLs or zip members per job.")
    jobs_max_active: int = Field(default=100, ge=1, description="Jobs queued or running at once.")
    jobs_zip_max_uncompressed_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Bytes a job's zip may inflate to (refused with 413 beyond).",
    )
    jobs_zip_max_ratio: float = Field(
        default=20.0,
        gt=1,
        description="How many times its own size a zip may inflate to: photos barely compress "
        "(JPEG, PNG ~1x, BMP a few x); far beyond is a zip bomb (413).",
    )
    jobs_uploads_max_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=1024,
        description="Disk the extracted zips of all active jobs may use together (413 beyond).",
    )
    jobs_chunk_images: int = Field(
        default=8, ge=1, description="Images analysed and committed together."
    )
    jobs_poll_seconds: float = Field(default=1.0, gt=0)
    jobs_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="PostgreSQL: a running job whose heartbeat (renewed before each chunk) is "
        "older than this is taken to have lost its replica and is queued again.",
    )

    @model_validator(mode="before")
    @classmethod
    def _platform_port(cls, values: object) -> object:
        """`PORT`, which container platforms (Cloud Run, Heroku, Knative) set, when neither
        `port` nor AGELENS_PORT is given."""
        platform_port = os.environ.get("PORT", "").strip()
        if isinstance(values, dict) and "port" not in values and platform_port:
            return {**values, "port": platform_port}
        return values

    @field_validator(
        "api_key_hashes", "api_keys", "url_allow_networks", "cors_origins", mode="before"
    )
    @classmethod
    def _lists_from_env(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("api_key_hashes")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise ValueError(
                    "api_key_hashes holds sha256 hex digests (64 hex characters); "
                    "`agelens keys new` prints a key and its digest"
                )
        return [digest.lower() for digest in value]

    @field_validator("basic_auth_username", mode="before")
    @classmethod
    def _empty_user_name_is_unset(cls, value: object) -> object:
        # An empty variable (a Secret's empty key, say) means no user name is required.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("examples_dir", mode="before")
    @classmethod
    def _examples_location(cls, value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str) and value.startswith("s3://"):
            bucket = value[len("s3://") :].partition("/")[0]
            if not bucket:
                raise ValueError("examples_dir as S3 is s3://bucket/prefix")
        return value or None

    @field_validator("jobs_database_url")
    @classmethod
    def _jobs_database(cls, value: str | None) -> str | None:
        if value is None or value.lower().startswith("sqlite:///"):
            return value
        if value.lower().startswith(("postgresql://", "postgresql+psycopg://")):
            return value
        raise ValueError(
            "jobs_database_url must be sqlite:////path/to/jobs.sqlite3 or "
            "postgresql://user:password@host:port/database"
        )

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    def jobs_database(self) -> str:
        """The jobs database URL: the configured one, or SQLite in `data_dir`."""
        if self.jobs_database_url:
            return self.jobs_database_url
        return f"sqlite:///{(self.data_dir / 'jobs.sqlite3').resolve()}"

    def key_digests(self) -> frozenset[str]:
        """Every accepted key's sha256 digest (from both key fields)."""
        return frozenset(self.api_key_hashes) | {hash_api_key(k) for k in self.api_keys}

    @property
    def auth_required(self) -> bool:
        """Keys are required as soon as any is configured."""
        return bool(self.key_digests())

    def check_exposure(self) -> None:
        """Refuse to serve beyond loopback without keys unless `insecure` says so.

        Raises ValueError with the fix.
        """
        if self.host in LOOPBACK_HOSTS or self.auth_required or self.insecure:
            return
        raise ValueError(
            f"refusing to serve on {self.host} without API keys: anyone who can reach it could "
            "use it. Set AGELENS_API_KEY_HASHES (see `agelens keys new`), bind to 127.0.0.1, or "
            "pass --insecure (AGELENS_INSECURE=true) if something in front of it does the "
            "authentication"
        )
