"""The canary: a harmless generated picture every mirror-scan flags by its hashes, whatever the model
says, in every mode; its items carry the label "canary", show each step in `canary status`, and are
never exported to hash lists."""

from __future__ import annotations

import io
import json

from PIL import Image

from mirror_scan.lists.canary import CANARY_LIST, canary_bytes
from mirror_scan.model.synthetic import generated_image

from .conftest import run_cli


def test_the_canary_is_flagged_by_its_hashes_even_re_encoded_and_never_exported(
    tmp_path, tiny_bundle_master, write_policy
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    assert run_cli("canary", "make", str(mirror / "canary.png")).returncode == 0
    assert (mirror / "canary.png").read_bytes() == canary_bytes("PNG")
    # pict-rs may re-encode an upload: a JPEG, smaller, still matches (by PDQ).
    smaller = Image.open(io.BytesIO(canary_bytes("PNG"))).resize((256, 192))
    buf = io.BytesIO()
    smaller.save(buf, format="JPEG", quality=70)
    (mirror / "reencoded.jpg").write_bytes(buf.getvalue())
    generated_image(3, 64, 48).save(mirror / "benign.png")
    # A policy that clears everything, at the most lenient severity: only the list can flag.
    clear = write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything")
    where = ("--state", str(tmp_path / "s.db"), "--quarantine", str(tmp_path / "q"))
    proc = run_cli("scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(clear),
                   "--severity", "1", "--json", *where)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["flagged"] == 2
    items = json.loads(run_cli("quarantine", "list", "--json", *where).stdout)
    assert sorted(i["original"].rsplit("/", 1)[-1] for i in items) == ["canary.png", "reencoded.jpg"]
    assert all(i["labels"] == ["canary"] and i["reason"]["hash_list"] == CANARY_LIST for i in items), items
    assert (mirror / "benign.png").exists()
    # canary status shows each one with its steps.
    status = json.loads(run_cli("canary", "status", "--json", *where).stdout)
    assert {c["id"] for c in status} == {i["id"] for i in items}
    assert all(any("quarantined" in s["step"] for s in c["steps"]) for c in status), status
    # Never shared: the hash export leaves canaries out.
    exported = run_cli("hashlist", "export", "--unreviewed", *where)
    assert exported.returncode == 0, exported.stderr
    assert all(i["sha256"] not in exported.stdout for i in items)


def test_the_validator_rejects_the_canary(tmp_path, tiny_bundle_master, write_policy):
    from mirror_scan.hashing import sha256_bytes
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.scoring import Scorer
    from mirror_scan.policy import load_policy
    from mirror_scan.scan.decoders.decode import Limits, decode
    from mirror_scan.scan.record import picture_of
    from mirror_scan.scan.uploads import Batcher, Job, ServeConfig
    from mirror_scan.store.ledger import Ledger
    from mirror_scan.store.quarantine import Quarantine

    bundle = load_bundle(tiny_bundle_master)
    policy = load_policy(write_policy({"any": {"cartoon": 2.0}}, {"any": 1}, name="clear-everything"))
    ledger = Ledger(tmp_path / "s.db")
    batcher = Batcher(ledger, Quarantine(tmp_path / "q", ledger), bundle, Scorer(bundle, device="cpu"), policy,
                      ServeConfig(token="t", severity=1.0))  # fmt: skip
    data = canary_bytes("JPEG")
    decoded = decode(data, bundle.preprocess, Limits(coverage=policy.coverage))
    job = Job(picture_of(sha256_bytes(data), data, decoded), data, "image/jpeg", decoded.pixels)
    batcher._decide([job])  # the batcher thread's own step, in this thread
    flagged, reason = job.future.result(timeout=5)
    assert flagged and reason["labels"] == ["canary"] and reason["hash_list"] == CANARY_LIST, reason
    ledger.close()
