"""The bucket read directly with boto3, configured from the same rclone remote the rest of mirror-scan
uses (`RCLONE_CONFIG_<NAME>_*` variables: TYPE=s3, ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY, REGION,
SESSION_TOKEN, FORCE_PATH_STYLE). rclone stays the tool for mirroring and single-object moves; this is
for reading many objects fast: boto3 lists (streamed pages with ETags), pyarrow's C++ S3 client reads
(measured: 3x boto3's objects/s), both with standard retries and timeouts, and a bounded number of
requests in flight (the fetch threads). Keys and secrets never appear in messages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import MirrorScanError
from ..rclone import scrub


class BucketError(MirrorScanError):
    """The bucket cannot be listed or read."""


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    etag: str
    mtime_ns: int


@dataclass(frozen=True)
class S3Settings:
    """Everything a worker needs to open its own client (picklable: shipped to Ray workers as is; the
    secret travels with the task, as it would in any S3-reading job)."""

    remote: str  # NAME:bucket
    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = True
    max_connections: int = 16

    @property
    def bucket(self) -> str:
        return self.remote.split(":", 1)[1].split("/", 1)[0]

    @classmethod
    def from_rclone_env(cls, remote: str, max_connections: int = 16, env: dict | None = None) -> S3Settings:
        env = os.environ if env is None else env
        name, _, rest = remote.partition(":")
        if not name or not rest:
            raise BucketError(f"{remote!r} is not NAME:bucket", hint="e.g. pictrs:pictrs-bucket")
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        kind = env.get(prefix + "TYPE")
        if kind is None:
            raise BucketError(
                f"the rclone remote '{name}' is not set in the environment",
                hint=f"bucket scan reads {prefix}TYPE=s3, {prefix}ENDPOINT, {prefix}ACCESS_KEY_ID and "
                f"{prefix}SECRET_ACCESS_KEY (as rclone does)",
            )
        if kind != "s3":
            raise BucketError(f"the rclone remote '{name}' is of type {kind!r}; bucket scan reads S3 buckets")
        return cls(
            remote=remote.rstrip("/"),
            endpoint=env.get(prefix + "ENDPOINT") or None,
            region=env.get(prefix + "REGION") or "us-east-1",
            access_key=env.get(prefix + "ACCESS_KEY_ID") or None,
            secret_key=env.get(prefix + "SECRET_ACCESS_KEY") or None,
            session_token=env.get(prefix + "SESSION_TOKEN") or None,
            path_style=(env.get(prefix + "FORCE_PATH_STYLE", "true").lower() != "false"),
            max_connections=max_connections,
        )

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=self.max_connections,
            s3={"addressing_style": "path" if self.path_style else "auto"},
            connect_timeout=10,
            read_timeout=60,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            config=config,
        )

    def arrow_filesystem(self) -> Any:
        from urllib.parse import urlsplit

        from pyarrow import fs

        endpoint = urlsplit(self.endpoint) if self.endpoint else None
        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.session_token,
            region=self.region,
            scheme=endpoint.scheme if endpoint else "https",
            endpoint_override=endpoint.netloc if endpoint else None,
            force_virtual_addressing=not self.path_style,
            connect_timeout=10,
            request_timeout=60,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=5),
        )

    def scrub(self, text: str) -> str:
        return scrub(text, [self.secret_key or "", self.access_key or "", self.session_token or ""])


class Bucket:
    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client = settings.client()  # boto3: listing (streamed pages, with ETags)
        self._arrow = None  # pyarrow's S3 filesystem: reads

    def _error(self, what: str, err: Exception) -> BucketError:
        return BucketError(
            f"{what} on {self.settings.remote} failed: {self.settings.scrub(str(err))}",
            hint="check the RCLONE_CONFIG_* settings of the remote and that the bucket exists",
        )

    def list(self, prefix: str = "") -> Iterator[Listed]:
        """Every object under prefix, streamed page by page (1,000 keys per request): never held whole."""
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue  # directory markers
                    yield Listed(
                        key,
                        int(obj["Size"]),
                        str(obj.get("ETag", "")).strip('"'),
                        int(obj["LastModified"].timestamp() * 1e9),
                    )
        except (BotoCoreError, ClientError) as err:
            raise self._error("listing", err) from None

    def get(self, key: str, max_bytes: int) -> bytes | str:
        """The object's bytes, or the reason it cannot be read (recorded as the object's error). Reads go
        through pyarrow's S3 filesystem (C++ client): 3x boto3's objects/s here (scripts/bench_bucket.py)."""
        try:
            with self._reader().open_input_stream(f"{self.settings.bucket}/{key}") as stream:
                data = stream.read(max_bytes + 1)
        except FileNotFoundError:
            return "gone from the bucket since it was listed"
        except OSError as err:
            return f"read failed: {self.settings.scrub(str(err)).splitlines()[0]}"
        if len(data) > max_bytes:
            return f"larger than the {max_bytes >> 20} MiB limit"
        return data

    def _reader(self):
        if self._arrow is None:
            self._arrow = self.settings.arrow_filesystem()
        return self._arrow
