"""The bucket read directly with boto3, configured from the same rclone remote the rest of mirror-scan
uses, resolved the way rclone resolves it (rclone.conf, `RCLONE_CONFIG`, `RCLONE_CONFIG_<NAME>_*`
variables: type s3, endpoint, access_key_id, secret_access_key, region, session_token,
force_path_style). rclone stays the tool for mirroring and single-object moves; this is
for reading many objects fast: boto3 lists (streamed pages with ETags), pyarrow's C++ S3 client reads
(measured: 3x boto3's objects/s), both with standard retries and timeouts, and a bounded number of
requests in flight (the fetch threads). Keys and secrets never appear in messages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mirror_scan.errors import MirrorScanError
from mirror_scan.redact import scrub


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
    def from_rclone(cls, remote: str, rclone=None, max_connections: int = 16) -> S3Settings:
        """The remote as rclone resolves it (rclone.conf, RCLONE_CONFIG or its variables: one resolver for
        every command, `Rclone.remote_options`)."""
        from mirror_scan.clients.rclone import Rclone

        name, _, rest = remote.partition(":")
        if not name or not rest:
            raise BucketError(f"{remote!r} is not NAME:bucket", hint="e.g. pictrs:pictrs-bucket")
        options = (rclone or Rclone.locate()).remote_options(remote)
        if options is None:
            raise BucketError(
                f"rclone knows no remote '{name}'",
                hint="define it with `rclone config` (rclone.conf) or RCLONE_CONFIG_"
                f"{name.upper()}_TYPE=s3 and its ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY variables",
            )
        return cls.from_options(remote, options, max_connections)

    @classmethod
    def from_options(cls, remote: str, options: dict[str, str], max_connections: int = 16) -> S3Settings:
        name = remote.partition(":")[0]
        if options.get("type") != "s3":
            raise BucketError(
                f"the rclone remote '{name}' is of type {options.get('type')!r}; bucket scan reads S3 buckets"
            )
        return cls(
            remote=remote.rstrip("/"),
            endpoint=options.get("endpoint") or None,
            region=options.get("region") or "us-east-1",
            access_key=options.get("access_key_id") or None,
            secret_key=options.get("secret_access_key") or None,
            session_token=options.get("session_token") or None,
            path_style=(options.get("force_path_style", "true").lower() != "false"),
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
        through pyarrow's S3 filesystem (C++ client): 3x boto3's objects/s here (scripts/bench_bucket.py);
        a key pyarrow would read as another path ('//', '.' or '..' segments, control characters) is read
        with boto3, exactly as listed."""
        if not _plain_path(key):
            try:
                data = self.read(key, max_bytes + 1)
            except BucketError as err:
                return str(err).splitlines()[0]
            if data is None:
                return "gone from the bucket since it was listed"
            return f"larger than the {max_bytes >> 20} MiB limit" if len(data) > max_bytes else data
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

    # ---------------------------------------------------------------- single objects, key exactly as listed

    def head(self, key: str) -> dict | None:
        """{size, etag} of the object, or None if there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("HEAD", err) from None
        except BotoCoreError as err:
            raise self._error("HEAD", err) from None
        return {"size": int(answer["ContentLength"]), "etag": str(answer.get("ETag", "")).strip('"')}

    def read(self, key: str, max_bytes: int | None = None) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.get_object(Bucket=self.settings.bucket, Key=key)
            return answer["Body"].read(max_bytes) if max_bytes else answer["Body"].read()
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("GET", err) from None
        except BotoCoreError as err:
            raise self._error("GET", err) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self.settings.bucket, Key=key)
        except (BotoCoreError, ClientError) as err:
            raise self._error("DELETE", err) from None

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.settings.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as err:
            raise self._error("PUT", err) from None


def _plain_path(key: str) -> bool:
    """A key that a path-based client (pyarrow) reads as exactly that key."""
    return (
        not key.startswith("/")
        and all(part not in ("", ".", "..") for part in key.split("/"))
        and not any(ord(c) < 32 or ord(c) == 127 for c in key)
    )
