"""`bucket scan --engine ray` past one node (issue 43): a real Ray cluster on this machine (Ray's own
`ray.cluster_utils.Cluster`: a head without CPUs, holding the cluster's control, and two raylets with one
CPU each, for the two stages), a real `rclone serve s3`, the real CLI as the driver. A node lost mid-scan
for good ends the scan with exit 2 within the stall timeout, saying what is missing, and the rerun with a
node back resumes; a node lost and back, whichever stage it held, lets the scan finish; every object ends
in the ledger exactly once with the local engine's verdicts. And the ways an admin names a cluster:
RAY_ADDRESS alone, a dead address, ray:// without Ray Client."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CLI, run_cli
from .test_bucket import OBJECTS, Site, bucket  # noqa: F401 - the bucket fixture: a real S3 with OBJECTS

pytest.importorskip("ray")
# A cluster's raylets take the 2 CPUs in bursts: these tests never overlap the suite's timed tests, nor
# each other across workers (conftest's `alone`).
pytestmark = pytest.mark.usefixtures("alone")


class Nodes:
    def __init__(self, tmp: Path, monkeypatch) -> None:
        from ray.cluster_utils import Cluster

        # The nodes' processes inherit this environment (the driver's does not reach them): each fetch-decode
        # call takes 0.4 s longer, so the scan lasts long enough to lose a node; each actor says where it runs.
        self.placement = tmp / "placement"
        self.placement.mkdir()
        monkeypatch.setenv("MIRROR_SCAN_TEST_SLOW_BATCH", "0.4")
        monkeypatch.setenv("MIRROR_SCAN_TEST_PLACEMENT", str(self.placement))
        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 0, "include_dashboard": False})  # fmt: skip
        self.workers = [self.cluster.add_node(num_cpus=1) for _ in range(2)]
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def holding(self, stage: str, within: float = 60.0):
        """The worker node where the latest actor of `stage` runs."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            placed = sorted(self.placement.glob(f"{stage}-*"), key=lambda p: p.stat().st_mtime)
            if placed:
                node_id = placed[-1].read_text()
                for node in self.workers:
                    if node.node_id == node_id:
                        return node
            time.sleep(0.2)
        raise AssertionError(f"no {stage} actor on a worker node")

    def lose(self, node) -> None:
        self.cluster.remove_node(node)  # its raylet and workers killed, as when the machine goes away
        self.workers.remove(node)

    def add(self) -> None:
        self.workers.append(self.cluster.add_node(num_cpus=1))
        self.cluster.wait_for_nodes()


@pytest.fixture
def cluster(alone, tmp_path, monkeypatch):
    nodes = Nodes(tmp_path, monkeypatch)
    yield nodes
    nodes.cluster.shutdown()


def _ledger(state: Path) -> dict[str, tuple]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT path, status, verdict FROM files").fetchall()
    keys = [os.fsdecode(path).split("/", 1)[1] for path, _, _ in rows]
    assert len(keys) == len(set(keys)), "an object is in the ledger more than once"
    return {key: (status, verdict) for key, (_, status, verdict) in zip(keys, rows, strict=True)}


def _scan_in_background(site: Site, address: str, *args: str, env: dict) -> subprocess.Popen:
    argv = [*CLI, "bucket", "scan", site.server.remote, "--model", str(site.bundle), "--quarantine",
            str(site.quarantine), "--state", str(site.state), "--json", "--engine", "ray", "--ray-address",
            address, "--dry-run", "--batch-size", "1", *args]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **site.env, **env})  # fmt: skip


def _wait_for_ingested(state: Path, count: int, proc: subprocess.Popen, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if state.exists():
            try:
                with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                    if db.execute("SELECT count(*) FROM files").fetchone()[0] >= count:
                        return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} objects ingested in {within} s")


def test_a_node_lost_for_good_ends_the_scan_with_exit_2_and_the_rerun_resumes(
    bucket,  # noqa: F811 - the bucket fixture from test_bucket
    cluster,
    tmp_path,
    tiny_bundle_master,
):
    local = Site(tmp_path, bucket, tiny_bundle_master, "local")
    local.bucket_scan("--dry-run")
    expected = _ledger(local.state)

    site = Site(tmp_path, bucket, tiny_bundle_master, "cluster")
    scan = _scan_in_background(site, cluster.address, "--stall-timeout", "15s", env={})
    _wait_for_ingested(site.state, 2, scan)
    # The node holding the fetch-and-decode actor goes for good: the inference actor holds the only other
    # CPU while it waits for input, so no fetch-and-decode actor can be placed again.
    cluster.lose(cluster.holding("FetchDecode"))
    lost = time.monotonic()
    out, err = scan.communicate(timeout=180)
    gave_up = time.monotonic() - lost
    assert scan.returncode == 2 and not out, (out, err)
    assert "lost what the scan needs" in err and "run the same command again: it resumes" in err, err
    assert "1 CPU(s)" in err and "2 CPU(s)" in err, err  # what it has and what the stages hold
    assert "Traceback" not in err and "core_worker" not in err and "INFO" not in err, err  # Ray's own lines
    assert gave_up < 15 + 60, gave_up  # the stall timeout, plus Ray's own time to see the node gone
    partial = _ledger(site.state)
    assert 0 < len(partial) < len(OBJECTS)

    cluster.add()
    proc = run_cli("bucket", "scan", bucket.remote, "--model", str(tiny_bundle_master), "--quarantine",
                   str(site.quarantine), "--state", str(site.state), "--json", "--engine", "ray", "--ray-address",
                   cluster.address, "--dry-run", env=site.env, process=True)  # fmt: skip
    assert proc.returncode in (0, 2), proc.stderr  # 2: the two files no one can read
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["skipped_unchanged"] + summary["scanned"] + summary["errors"] == len(OBJECTS), summary
    assert summary["scanned"] <= len(OBJECTS) - len(partial) + 2  # nothing scored twice (errors are retried)
    assert _ledger(site.state) == expected


@pytest.mark.parametrize("stage", ["FetchDecode", "Infer"])
def test_a_node_lost_and_back_lets_the_scan_finish(bucket, cluster, tmp_path, tiny_bundle_master, stage):  # noqa: F811 - the bucket fixture from test_bucket
    site = Site(tmp_path, bucket, tiny_bundle_master, f"back-{stage}")
    scan = _scan_in_background(site, cluster.address, "--stall-timeout", "10m", env={})
    _wait_for_ingested(site.state, 2, scan)
    cluster.lose(cluster.holding(stage))
    time.sleep(3)
    cluster.add()
    out, err = scan.communicate(timeout=240)
    assert scan.returncode == 2 and "Traceback" not in err, (out, err)  # 2: the two files no one can read
    summary = json.loads(out.splitlines()[-1])
    assert summary["ingested"] == len(OBJECTS), summary
    assert set(_ledger(site.state)) == set(OBJECTS)


def test_ray_address_names_the_cluster_as_rays_own_tools_do(bucket, cluster, tmp_path, tiny_bundle_master):  # noqa: F811 - the bucket fixture from test_bucket
    site = Site(tmp_path, bucket, tiny_bundle_master, "env")
    proc = site.bucket_scan("--engine", "ray", "--dry-run", env={"RAY_ADDRESS": cluster.address})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # 2: the unreadable files
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["ray_cluster"] == cluster.address and summary["ray_cpus"] == 2, summary
    assert set(_ledger(site.state)) == set(OBJECTS)


def test_a_cluster_that_is_not_there_is_exit_2_within_seconds(bucket, tmp_path, tiny_bundle_master):  # noqa: F811 - the bucket fixture from test_bucket
    from .s3server import free_port

    site = Site(tmp_path, bucket, tiny_bundle_master, "dead")
    started = time.monotonic()
    dead = f"127.0.0.1:{free_port()}"
    proc = site.bucket_scan("--engine", "ray", "--ray-address", dead, "--dry-run")
    assert proc.returncode == 2 and f"no Ray cluster answers at {dead}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 60
    proc = site.bucket_scan("--engine", "ray", "--dry-run", env={"RAY_ADDRESS": dead})
    assert proc.returncode == 2 and "no Ray cluster answers" in proc.stderr, proc.stderr
    # Ray Client is not among the bucket extra's packages: said, with what to install.
    if subprocess.run([sys.executable, "-c", "import grpc"], capture_output=True).returncode != 0:
        proc = site.bucket_scan("--engine", "ray", "--ray-address", "ray://127.0.0.1:10001", "--dry-run")
        assert proc.returncode == 2 and "Ray Client is not installed" in proc.stderr, proc.stderr
        assert "ray[client]==" in proc.stderr


_CLUSTER_OF_ITS_OWN = """
import sys
from ray.cluster_utils import Cluster
made = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
print(made.address, flush=True)
sys.stdin.read()
made.shutdown()
"""


def test_a_cluster_with_token_auth_is_named_when_the_driver_lacks_it(bucket, tmp_path, tiny_bundle_master):  # noqa: F811 - the bucket fixture from test_bucket
    # Ray reads its authentication mode once per process: the cluster runs in a process of its own.
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t0ken" * 8}
    head = subprocess.Popen([sys.executable, "-c", _CLUSTER_OF_ITS_OWN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **token})  # fmt: skip
    try:
        address = head.stdout.readline().strip()
        assert address, "the cluster did not start"
        site = Site(tmp_path, bucket, tiny_bundle_master, "token")
        started = time.monotonic()
        proc = site.bucket_scan("--engine", "ray", "--ray-address", address, "--dry-run")
        assert proc.returncode == 2 and "requires token authentication" in proc.stderr, proc.stderr
        assert "RAY_AUTH_MODE=token" in proc.stderr and "Traceback" not in proc.stderr
        assert time.monotonic() - started < 90
        proc = site.bucket_scan("--engine", "ray", "--ray-address", address, "--dry-run", env=token)
        assert proc.returncode == 2 and json.loads(proc.stdout.splitlines()[-1])["ingested"] == len(OBJECTS)
        assert token["RAY_AUTH_TOKEN"] not in proc.stdout + proc.stderr
    finally:
        head.communicate(input="", timeout=60)
