"""A real S3 server on loopback for tests: `rclone serve s3` over a temp directory, with auth keys,
and an rclone remote for it configured through environment variables (never a connection string)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

ACCESS_KEY = "mirrorscan-test-access"
SECRET_KEY = "mirrorscan-test-SECRET-do-not-print"
REMOTE_NAME = "TESTS3"
BUCKET = "pictrs"


def rclone_binary() -> str:
    found = shutil.which("rclone", path=sysconfig.get_path("scripts")) or shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not installed: run the README's install command")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        (root / BUCKET).mkdir(parents=True, exist_ok=True)

    @property
    def remote(self) -> str:
        return f"{REMOTE_NAME}:{BUCKET}"

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        prefix = f"RCLONE_CONFIG_{REMOTE_NAME}_"
        return {
            "RCLONE_CONFIG": os.devnull,
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Other",
            prefix + "ENDPOINT": f"http://127.0.0.1:{self.port}",
            prefix + "ACCESS_KEY_ID": ACCESS_KEY,
            prefix + "SECRET_ACCESS_KEY": secret,
        }

    def start(self) -> None:
        # --dir-cache-time 1s: with 0s this rclone version spins at full CPU and stalls requests.
        self.proc = subprocess.Popen(
            [
                rclone_binary(),
                "serve",
                "s3",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}",
                "--dir-cache-time",
                "1s",
                "--config",
                os.devnull,
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("rclone serve s3 did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rclone(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [rclone_binary(), *args], env={**os.environ, **self.env()}, capture_output=True, check=check, timeout=60
        )

    def put(self, key: str, data: bytes, tmp: Path) -> None:
        local = tmp / "upload.bin"
        local.write_bytes(data)
        self.rclone("copyto", str(local), f"{self.remote}/{key}")

    def get(self, key: str) -> bytes | None:
        proc = self.rclone("cat", f"{self.remote}/{key}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def keys(self) -> set[str]:
        import json

        return {o["Path"] for o in json.loads(self.rclone("lsjson", "-R", "--files-only", self.remote).stdout)}


class RcloneMount:
    """A real `rclone mount` of the server's bucket (needs /dev/fuse and fusermount3)."""

    def __init__(
        self, server: S3Server, point: Path, cache_mode: str, dir_cache: str = "1s", extra: tuple[str, ...] = ()
    ) -> None:
        self.server, self.point = server, point
        point.mkdir()
        self.proc = subprocess.Popen(
            [rclone_binary(), "mount", server.remote, str(point), "--vfs-cache-mode", cache_mode,
             "--dir-cache-time", dir_cache, "--vfs-write-back", "0s", "--config", os.devnull, *extra],
            env={**os.environ, **server.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not os.path.ismount(point):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("rclone mount did not come up")
            time.sleep(0.1)

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.point)], check=False, capture_output=True)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
