"""The tool as a wheel, installed the way the README's production install does, outside the checkout: every
package of the tree is in the wheel (one was once missing: `bucket scan` failed from a wheel), and the
installed `mirror-scan` runs its commands and a scan from a directory that is not the checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """One wheel per run, shared by the xdist workers: pip builds in the checkout (build/, the egg-info),
    and two builds at once collide there ("File exists: build/bdist...")."""
    from .conftest import taking_turns

    with taking_turns(tmp_path_factory, "wheel-build") as shared:
        out = shared / "wheel"
        found = sorted(out.glob("mirror_scan-*.whl")) if out.exists() else []
        if found:
            return found[0]
        out.mkdir(exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
             str(REPO)],
            capture_output=True, text=True, timeout=600, cwd=out,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (found,) = out.glob("mirror_scan-*.whl")
        return found


def test_the_wheel_holds_every_package_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent for p in (REPO / "mirror_scan").rglob("__init__.py") if "__pycache__" not in p.parts]
    packages += [p.parent for p in (REPO / "onnx").rglob("__init__.py") if "__pycache__" not in p.parts]
    assert {p.name for p in packages} >= {"mirror_scan", "app", "bucket", "policy", "mirror_scan_export"}
    for package in packages:
        inside = (
            package.relative_to(REPO / "onnx") if package.is_relative_to(REPO / "onnx") else package.relative_to(REPO)
        )
        for module in package.glob("*.py"):
            assert f"{inside.as_posix()}/{module.name}" in names, f"{inside}/{module.name} is not in the wheel"
    for data in ("mirror_scan/policies/horde-v2.json", "mirror_scan/policies/horde-v1.json",
                 "mirror_scan_export/configs/tiny-test.json"):  # fmt: skip
        assert data in names, data
    assert not any(name.startswith(("tests/", "scripts/")) for name in names)


def test_the_installed_wheel_runs_outside_the_checkout(wheel, tmp_path, tiny_bundle_master, flag_all):
    """A fresh virtual environment outside the checkout, the wheel installed into it (its dependencies
    come from this environment's site-packages, which is what pip would install from the registry)."""
    venv = tmp_path / "prod-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    deps = sysconfig.get_path("purelib")  # numpy, onnxruntime, ... (not the checkout: .pth files here are not run)
    (Path(site) / "zz-deps.pth").write_text(deps + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "MIRROR_SCAN_DATA_DIR": str(tmp_path / "d"),
           "MIRROR_SCAN_CONFIG": str(tmp_path / "none.toml"), "NO_COLOR": "1", "COLUMNS": "200"}  # fmt: skip
    probe = "import mirror_scan, mirror_scan.bucket.engine; print(mirror_scan.__file__)"
    where = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=elsewhere, env=env,
                           timeout=120)  # fmt: skip
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr
    tool = str(venv / "bin" / "mirror-scan")
    for args in (["--help"], ["bucket", "scan", "--help"], ["serve", "--help"], ["lemmy", "grants", "--pictrs"]):
        proc = subprocess.run([tool, *args], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr)
    from .mediafiles import image_bytes

    mirror = elsewhere / "mirror"
    mirror.mkdir()
    (mirror / "a.png").write_bytes(image_bytes("PNG", 1))
    proc = subprocess.run([tool, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                           "--dry-run", "--json"], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert '"flagged": 1' in proc.stdout
