"""A bucket scan on a Ray cluster that loses nodes, longer than the suite's test (tests/test_ray_cluster.py):
a real Ray cluster on this machine (a CPU-less head, two 1-CPU nodes), a real `rclone serve s3` with
generated pictures, the real CLI as the driver. Each round loses the node holding a stage mid-scan: the
fetch-and-decode node for good (the scan must give up with exit 2 within --stall-timeout plus Ray's time to
see the loss), then a node is added and the scan rerun (it must resume and finish); the inference node
lost and back (the scan must finish on its own). Every round checks that every object is in the ledger
exactly once. Figures: seconds to give up, seconds to finish the resumed run, objects scored twice."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import REPO, bundle_for, emit, machine, parser

sys.path.insert(0, str(REPO))

STALL_S, QUICK_STALL_S = 15, 8


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of losses (default 3; --quick: 1)")
    p.add_argument("--objects", type=int, default=200, help="objects in the bucket (default 200; --quick: 20)")
    args = p.parse_args()
    rounds, count = (1, 16) if args.quick else (args.rounds, args.objects)
    stall_s = QUICK_STALL_S if args.quick else STALL_S
    args.tiny = args.tiny or args.quick
    bundle = bundle_for(args)

    from tests.s3server import S3Server

    figures: dict = {"machine": machine(), "objects": count, "stall_timeout_s": stall_s, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="ray-node-loss-") as tmp_name:
        tmp = Path(tmp_name)
        server = S3Server(tmp / "s3")
        server.start()
        try:
            _fill(server, tmp, count)
            for number in range(rounds):
                figures["rounds"].append(_round(server, bundle, tmp / f"round-{number}", count, stall_s))
                print(json.dumps(figures["rounds"][-1]), file=sys.stderr)
        finally:
            server.stop()
    done = figures["rounds"]
    figures["give_up_s_max"] = max(r["give_up_s"] for r in done)
    figures["scored_twice"] = sum(r["scored_twice"] for r in done)
    figures["all_once"] = all(r["all_once"] for r in done)
    emit(figures, args.json)
    return 0 if figures["all_once"] and figures["scored_twice"] == 0 else 1


def _fill(server, tmp: Path, count: int) -> None:
    import io

    from mirror_scan.model.synthetic import generated_image

    for i in range(count):
        buffer = io.BytesIO()
        generated_image(i, 96, 64).save(buffer, "JPEG", quality=88)
        server.put(f"{i % 13:02x}/object-{i:05d}", buffer.getvalue(), tmp)


class _Cluster:
    def __init__(self, placement: Path) -> None:
        from ray.cluster_utils import Cluster

        os.environ["MIRROR_SCAN_TEST_SLOW_BATCH"] = "0.2"  # the nodes' processes inherit these (tests only)
        os.environ["MIRROR_SCAN_TEST_PLACEMENT"] = str(placement)
        self.placement = placement
        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 0, "include_dashboard": False})  # fmt: skip
        self.workers = [self.cluster.add_node(num_cpus=1) for _ in range(2)]
        self.cluster.wait_for_nodes()

    def holding(self, stage: str):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in sorted(self.placement.glob(f"{stage}-*"), key=lambda p: p.stat().st_mtime, reverse=True):
                found = [n for n in self.workers if n.node_id == path.read_text()]
                if found:
                    return found[0]
            time.sleep(0.2)
        raise RuntimeError(f"no {stage} actor on a worker node")

    def lose(self, node) -> None:
        self.cluster.remove_node(node)
        self.workers.remove(node)

    def add(self) -> None:
        self.workers.append(self.cluster.add_node(num_cpus=1))
        self.cluster.wait_for_nodes()


def _round(server, bundle: Path, where: Path, count: int, stall_s: int) -> dict:
    where.mkdir(parents=True)
    (where / "placement").mkdir()
    cluster = _Cluster(where / "placement")
    state = where / "state.db"
    try:
        argv = [sys.executable, "-m", "mirror_scan.cli", "bucket", "scan", server.remote, "--model", str(bundle),
                "--state", str(state), "--quarantine", str(where / "q"), "--json", "--engine", "ray",
                "--ray-address", cluster.cluster.address, "--dry-run", "--batch-size", "1",
                "--stall-timeout", f"{stall_s}s"]  # fmt: skip
        env = {**os.environ, **server.env()}
        # 1. The fetch-and-decode node lost for good: the scan gives up.
        scan = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _wait_for(state, max(2, count // 5), scan)
        cluster.lose(cluster.holding("FetchDecode"))
        lost = time.monotonic()
        _, err = scan.communicate(timeout=600)
        give_up_s = time.monotonic() - lost
        gave_up = scan.returncode == 2 and "lost what the scan needs" in err
        before = _count(state)
        # 2. A node back; the rerun resumes, and loses the inference node, which comes back.
        cluster.add()
        started = time.monotonic()
        scan = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _wait_for(state, before + 2, scan)
        cluster.lose(cluster.holding("Infer"))
        time.sleep(3)
        cluster.add()
        out, err = scan.communicate(timeout=900)
        resumed_s = time.monotonic() - started
        summary = json.loads(out.splitlines()[-1]) if out.strip() else {}
        rows = _count(state)
        return {
            "gave_up": gave_up,
            "give_up_s": round(give_up_s, 1),
            "ingested_before_loss": before,
            "resumed_exit": scan.returncode,
            "resumed_s": round(resumed_s, 1),
            "scored_twice": max(0, summary.get("scanned", 0) - (count - before)),
            "all_once": rows == count and _distinct(state) == count,
        }
    finally:
        cluster.cluster.shutdown()


def _wait_for(state: Path, rows: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the scan ended early: {proc.communicate()}")
        if _count(state) >= rows:
            return
        time.sleep(0.2)
    raise RuntimeError(f"fewer than {rows} objects ingested in 300 s")


def _count(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM files").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _distinct(state: Path) -> int:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(DISTINCT path) FROM files").fetchone()[0]


if __name__ == "__main__":
    sys.exit(main())
