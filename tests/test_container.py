"""The container image and the compose file (issue 40), with Debian's podman as root: the image built by
scripts/build-image.sh with no network inside the build, then run as uid 1000 with no network at all: a
scan of a mounted tree with a mounted model gives the verdicts the same scan gives outside the container;
a quarantine and a restore keep the bytes and the quarantine's modes on the host's volume; and
deploy/compose.yaml's `serve`, brought up by podman-compose, answers a client container that posts a
picture the way pict-rs does (chunked, a Content-Type and nothing else: pict-rs src/ingest.rs, 0.5) by
service name, 200 for an allowlisted picture and 406 for a flagged one.

Settings for this machine (field-facts, "Containers"): runc (crun refuses the hybrid cgroups here) and
lower default ulimits (root cannot raise them here), in a containers.conf given through CONTAINERS_CONF:
kept in the test, never in the image or the machine's files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO, run_cli, taking_turns
from .mediafiles import image_bytes

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0,
    reason="podman as root is needed (scripts/install.sh installs podman, runc and mmdebstrap as root on Debian)",
)
IMAGE = "localhost/mirror-scan:test"
UID = 1000


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory) -> dict[str, str]:
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n\n[engine]\nruntime = "runc"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(podman_env, tmp_path_factory) -> str:
    """The CPU image, built as the README says (the base made from Debian's packages when there is none);
    built once a run: the workers take turns, and the second finds podman's layers cached."""
    if (
        shutil.which("mmdebstrap") is None
        and subprocess.run(
            ["podman", "image", "exists", "localhost/mirror-scan-base:bookworm"], env=podman_env, check=False
        ).returncode
    ):
        pytest.skip("no base image and no mmdebstrap to make one (scripts/install.sh installs it)")
    with taking_turns(tmp_path_factory, "container-image"):
        proc = subprocess.run(["bash", "scripts/build-image.sh", "--tag", IMAGE], cwd=REPO, env=podman_env,
                              capture_output=True, text=True, timeout=1500, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return IMAGE


def _podman(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _owned(*paths: Path) -> None:
    """Host directories the container's user writes: owned by that uid (field-facts: a bind mount is
    writable by a non-root container user only so)."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        for p in (path, *path.rglob("*")):
            os.chown(p, UID, UID)


def _run(env: dict, image: str, mounts: list[str], *args: str) -> subprocess.CompletedProcess:
    volumes = [x for m in mounts for x in ("-v", m)]
    return _podman(env, "run", "--rm", "--network=none", "--user", f"{UID}:{UID}", *volumes, image, *args)


def test_the_image_scans_quarantines_and_restores_as_outside_it(
    image, podman_env, tmp_path, tiny_bundle_master, write_policy
):
    # No torch and no open_clip in the runtime image; the service user is not root.
    checked = _podman(podman_env, "run", "--rm", "--network=none", "--entrypoint", "/opt/mirror-scan/bin/python",
                      image, "-c", "import importlib.util as u, os; print(u.find_spec('torch') is None, "
                      "u.find_spec('open_clip') is None, os.getuid())")  # fmt: skip
    assert checked.stdout.split() == ["True", "True", str(UID)], checked

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        (tree / f"p{i}.png").write_bytes(image_bytes("PNG", 300 + i, size=(64, 48)))
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an error, in both
    # A threshold between the pictures' similarities: some flagged, some not (the policy decides).
    outside = tmp_path / "outside"
    outside.mkdir()
    probe = write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="probe")
    run_cli("scan", str(tree), "--dry-run", "--model", str(tiny_bundle_master), "--policy", str(probe),
            "--state", str(outside / "probe.db"), "--quarantine", str(outside / "q"),
            "--report", str(outside / "probe.jsonl"))  # fmt: skip
    import re

    sims = sorted(float(m) for m in re.findall(r"cartoon (-?\d+\.\d+)>", (outside / "probe.jsonl").read_text()))
    assert len(sims) == 6, sims
    threshold = round((sims[2] + sims[3]) / 2, 6)
    policy = write_policy({"any": {"cartoon": threshold}}, {"any": 1}, name="split")
    proc = run_cli("scan", str(tree), "--dry-run", "--model", str(tiny_bundle_master), "--policy", str(policy),
                   "--state", str(outside / "s.db"), "--quarantine", str(outside / "q"),
                   "--report", str(outside / "report.jsonl"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr

    state = tmp_path / "state"
    _owned(state)
    mounts = [f"{tree}:/data:ro", f"{tiny_bundle_master}:/models/bundle:ro", f"{policy}:/etc/mirror-scan/p.json:ro",
              f"{state}:/var/lib/mirror-scan"]  # fmt: skip
    inside = _run(podman_env, image, mounts, "scan", "/data", "--dry-run", "--policy", "/etc/mirror-scan/p.json",
                  "--report", "/var/lib/mirror-scan/report.jsonl")  # fmt: skip
    assert inside.returncode == 1, inside.stderr[-3000:]

    def verdicts(report: Path) -> dict[str, tuple]:
        """name -> (status, verdict, reason): the reason carries each similarity to four places."""
        records = [json.loads(line) for line in report.read_text().splitlines()]
        return {os.path.basename(r["path"]): (r["status"], r["verdict"], r["reason"]) for r in records}

    ours, theirs = verdicts(outside / "report.jsonl"), verdicts(state / "report.jsonl")
    assert ours == theirs and len(ours) == 7, (ours, theirs)
    assert {v[1] for v in ours.values()} >= {"flagged", "clean"}, ours

    # Quarantine, then restore, inside the container: the bytes and the private modes on the host's volume.
    mirror = tmp_path / "mirror"
    shutil.copytree(tree, mirror)
    _owned(mirror)
    mounts[0] = f"{mirror}:/data"
    acted = _run(podman_env, image, mounts, "scan", "/data", "--policy", "/etc/mirror-scan/p.json")
    assert acted.returncode == 1, acted.stderr[-3000:]
    quarantine = state / "quarantine"
    items = sorted((quarantine / "items").iterdir())
    flagged = [name for name, v in ours.items() if v[1] == "flagged"]
    assert len(items) == len(flagged) and not any((mirror / name).exists() for name in flagged)
    for path in (quarantine, quarantine / "items", *items):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for item in items:
        assert stat.S_IMODE((item / "data").stat().st_mode) == 0o600 and (item / "data").stat().st_uid == UID
    restored = _run(podman_env, image, mounts, "quarantine", "restore", items[0].name, "--yes")
    assert restored.returncode == 0, restored.stderr[-3000:]
    back = [name for name in flagged if (mirror / name).exists()]
    assert len(back) == 1 and (mirror / back[0]).read_bytes() == (tree / back[0]).read_bytes()


CLIENT = textwrap.dedent("""
    import http.client, json, sys, time
    def post(path, body):
        # As pict-rs posts: chunked (no Content-Length), the media type, nothing else.
        conn = http.client.HTTPConnection("mirror-scan-serve", 14051, timeout=60)
        conn.putrequest("POST", path, skip_accept_encoding=True)
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for start in range(0, len(body), 4096):
            piece = body[start:start + 4096]
            conn.send(b"%x\\r\\n" % len(piece) + piece + b"\\r\\n")
        conn.send(b"0\\r\\n\\r\\n")
        return conn.getresponse().status
    for _ in range(240):  # the validator loads its model first
        try:
            http.client.HTTPConnection("mirror-scan-serve", 14051, timeout=5).request("GET", "/healthz")
            break
        except OSError:
            time.sleep(0.5)
    token = open("/etc/mirror-scan/validate-token").read().strip()
    got = [post(f"/validate/{token}", open(f"/pictures/{name}", "rb").read()) for name in ("kept.png", "flagged.png")]
    print(json.dumps(got))
    sys.exit(0 if got == [200, 406] else 1)
""")


def test_the_compose_files_serve_answers_a_client_container_by_service_name(
    image, podman_env, tmp_path, tiny_bundle_master, write_policy
):
    compose = shutil.which("podman-compose") or str(Path(os.sys.executable).parent / "podman-compose")
    if not Path(compose).exists():
        pytest.skip("podman-compose is not installed (pip install 'podman-compose>=1.6')")
    site = tmp_path / "lemmy"
    conf = site / "mirror-scan"
    _owned(conf / "model")
    shutil.copy(REPO / "deploy" / "compose.yaml", conf / "compose.yaml")
    shutil.copytree(tiny_bundle_master, conf / "model", dirs_exist_ok=True)
    policy = write_policy({"any": {"cartoon": -1.0}}, {"any": 1}, name="flag-everything")
    (conf / "policy.json").write_text(policy.read_text())
    (conf / "config.toml").write_text('[scan]\npolicy = "/etc/mirror-scan/policy.json"\n')
    (conf / "environment").write_text("MIRROR_SCAN_LOG_FORMAT=text\n")
    (conf / "validate-token").write_text("validate-token-for-the-compose-test\n")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    kept, flagged = image_bytes("PNG", 401, size=(48, 32)), image_bytes("PNG", 402, size=(48, 32))
    (pictures / "kept.png").write_bytes(kept)
    (pictures / "flagged.png").write_bytes(flagged)
    (conf / "client.py").write_text(CLIENT)
    _owned(conf, pictures)
    for secret in ("environment", "validate-token"):
        (conf / secret).chmod(0o600)
    # Lemmy's compose file, as far as this test needs one: the policy file mounted into serve and a client
    # container in pict-rs's place; deploy/compose.yaml is merged after it, as the README says, its paths
    # relative to this directory.
    (site / "docker-compose.yml").write_text(
        textwrap.dedent(f"""
        services:
          mirror-scan-serve:
            volumes:
              - ./mirror-scan/policy.json:/etc/mirror-scan/policy.json:ro
          client:
            image: {image}
            entrypoint: ["/opt/mirror-scan/bin/python", "/etc/mirror-scan/client.py"]
            volumes:
              - ./mirror-scan/client.py:/etc/mirror-scan/client.py:ro
              - ./mirror-scan/validate-token:/etc/mirror-scan/validate-token:ro
              - {pictures}:/pictures:ro
            depends_on: [mirror-scan-serve]
    """)
    )
    files = ["-f", str(site / "docker-compose.yml"), "-f", str(conf / "compose.yaml")]
    env = {**podman_env, "MIRROR_SCAN_IMAGE": image}
    project = ["--project-name", f"mst{os.getpid()}"]

    def compose_cmd(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([compose, *project, *files, *args], cwd=site, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    from mirror_scan.hashing import sha256_bytes

    try:
        allow = compose_cmd("run", "--rm", "--no-deps", "mirror-scan-serve", "allowlist", "add", sha256_bytes(kept))
        assert allow.returncode == 0, allow.stdout[-2000:] + allow.stderr[-2000:]
        # The named volume for state and quarantine: private, the service user's.
        (volume,) = json.loads(_podman(podman_env, "volume", "inspect", f"{project[1]}_mirror-scan-state").stdout)
        mountpoint = Path(volume["Mountpoint"])
        assert stat.S_IMODE(mountpoint.stat().st_mode) == 0o700 and mountpoint.stat().st_uid == UID, volume
        assert (mountpoint / "state.db").stat().st_uid == UID
        up = compose_cmd("up", "--abort-on-container-exit", "--exit-code-from", "client", "mirror-scan-serve", "client")
        said = up.stdout + up.stderr
        assert up.returncode == 0 and "[200, 406]" in said, said[-6000:]
    finally:
        compose_cmd("down", "--volumes", timeout=180)
