"""Hash lists that interoperate (issue 24): our exports read by python-threatexchange's own signal classes,
ThreatExchange's and HMA's data imported, subscriptions to its local-file and static-sample exchanges,
pushes to an HMA-shaped bank (tests/hma_server.py follows HMA's source), and vPDQ for videos."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from mirror_scan.lists.formats import encode_vpdq, parse
from mirror_scan.lists.hashes import Matcher, pdq
from mirror_scan.model.bundle import Preprocess
from mirror_scan.model.synthetic import generated_image
from mirror_scan.scan.decoders.decode import Limits, decode

from .conftest import run_cli, wait_until
from .mediafiles import image_bytes, video_of

PREP = Preprocess((32, 32), (0.5,) * 3, (0.5,) * 3, "bicubic", "shortest")


@pytest.fixture
def clear_all(write_policy):
    return write_policy({"any": {"cartoon": 5.0}}, {"any": 1}, name="clear-everything")


def _cli(tmp_path, *args, **kw):
    return run_cli(*args, "--state", str(tmp_path / "state.db"), **kw)


@pytest.fixture
def quarantined(tmp_path, tiny_bundle_master, flag_all):
    """Two pictures and a video, flagged and quarantined."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.jpg").write_bytes(image_bytes("JPEG", 1, size=(640, 480)))
    (mirror / "b.png").write_bytes(image_bytes("PNG", 2, size=(300, 200)))
    (mirror / "c.mp4").write_bytes(video_of([generated_image(30 + i // 10, 96, 64) for i in range(40)]))
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--quarantine", str(tmp_path / "q"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    return mirror


def test_exports_are_valid_signals_to_python_threatexchange(quarantined, tmp_path):
    import csv

    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.sha256 import VideoSHA256Signal

    from mirror_scan.clients.exchanges import api_class, collab_config, signal_types
    from mirror_scan.lists.formats import decode_vpdq

    try:  # python-threatexchange's vPDQ class needs the vpdq package (built against FFmpeg's libraries)
        from threatexchange.extensions.vpdq.vpdq import VPDQSignal

        check_vpdq = VPDQSignal.validate_signal_str
    except ImportError:  # then vpdq_util.py's rules (VpdqCompactFeature.from_str), which decode_vpdq encodes
        check_vpdq = decode_vpdq
    checks = {"pdq": PdqSignal.validate_signal_str, "video_md5": VideoMD5Signal.validate_signal_str,
              "video_sha256": VideoSHA256Signal.validate_signal_str, "vpdq": check_vpdq}  # fmt: skip
    te = _cli(tmp_path, "hashlist", "export", "--unreviewed", "--format", "te", check=True).stdout
    assert te.splitlines()[0] == "signal_type,signal_str,collab,category,tags"
    rows = list(csv.DictReader(io.StringIO(te)))
    assert {r["signal_type"] for r in rows} == {"pdq", "video_md5", "video_sha256", "vpdq"}, te
    for row in rows:
        checks[row["signal_type"]](row["signal_str"])  # raises if not a valid signal for them
    local = _cli(tmp_path, "hashlist", "export", "--unreviewed", "--format", "local", check=True).stdout
    for line in local.splitlines():
        kind, _, value = line.partition(" ")
        checks[kind](value)
    # ...and the local-file exchange itself reads our local export.
    target = tmp_path / "ours.txt"
    target.write_text(local)
    api_cls = api_class("local_file")
    collab = collab_config("local_file", "ours", {"filename": str(target)})
    api = api_cls.for_collab(collab)
    types = signal_types()
    state: dict = {}
    for delta in api.fetch_iter(types, None):
        api_cls.naive_fetch_merge(state, delta.updates)
    by_type = api_cls.naive_convert_to_signal_type(types, collab, state)
    assert len(by_type[PdqSignal]) >= 3 and len(by_type[VideoMD5Signal]) == 1
    # Our own CSV keeps everything and reads back, quality included.
    ours = parse(_cli(tmp_path, "hashlist", "export", "--unreviewed", check=True).stdout)
    assert ours.errors == [] and {e[0] for e in ours.entries} == {"pdq", "sha256", "md5", "vpdq"}


def test_threatexchange_and_hma_files_import_and_bad_values_are_refused_by_line(tmp_path):
    known = pdq(generated_image(9, 320, 240))[0]
    md5 = hashlib.md5(b"some video").hexdigest()
    te = tmp_path / "te.csv"
    te.write_text("signal_type,signal_str,collab,category,tags\n"
                  f"pdq,{known},partner,POSITIVE_CLASS,\nvideo_md5,{md5.upper()},partner,POSITIVE_CLASS,\n"
                  "raw_text,The quick brown fox,partner,INVESTIGATION_SEED,\n"
                  f"vpdq,\"{encode_vpdq([(known, 100, 0.0), (known[::-1], 90, 1.0)]).replace(chr(34), chr(34) * 2)}\","
                  "partner,POSITIVE_CLASS,\n")  # fmt: skip
    proc = _cli(tmp_path, "hashlist", "import", str(te), "--name", "partner")
    assert proc.returncode == 0, proc.stderr
    assert "1 raw_text row(s) skipped" in proc.stderr and "1 pdq" in proc.stdout and "1 md5" in proc.stdout
    assert "1 vpdq" in proc.stdout
    local = tmp_path / "local.txt"
    local.write_text(f"pdq {known}\nvideo_sha256 {hashlib.sha256(b'v').hexdigest()}\n\n")
    assert _cli(tmp_path, "hashlist", "import", str(local), "--name", "local").returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(f"type,hash,quality\npdq,{'0' * 64},\npdq,{known},30\nmd5,{'f' * 32},\npdq,{known},90\n")
    proc = _cli(tmp_path, "hashlist", "import", str(bad), "--name", "bad")
    assert proc.returncode == 2 and "nothing imported" in proc.stderr
    assert "line 2: pdq 0000000000000000... is degenerate" in proc.stderr
    assert "line 3: pdq of quality 30, under 50" in proc.stderr
    assert "line 4: md5 ffffffffffffffff... is degenerate" in proc.stderr and "line 5" not in proc.stderr
    assert _cli(tmp_path, "hashlist", "export", "--format", "hma").returncode == 2  # not an HMA format: push


def test_a_local_file_subscription_picks_up_additions_in_a_running_watch(tmp_path, tiny_bundle_master, clear_all):
    from .test_watch import Watcher

    known, later = generated_image(9, 320, 240), generated_image(12, 320, 240)
    feed = tmp_path / "feed.txt"
    feed.write_text(f"pdq {pdq(known)[0]}\n")
    none = _cli(tmp_path, "hashlist", "fetch")
    assert none.returncode == 0 and "no subscriptions in this state" in none.stderr
    proc = _cli(tmp_path, "hashlist", "subscribe", "feed", "--exchange", "local_file",
                "--option", f"filename={feed}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _cli(tmp_path, "hashlist", "subscribe", "x", "--exchange", "local_file", "--option",
                "token=abc").returncode == 2  # fmt: skip
    fetched = json.loads(_cli(tmp_path, "hashlist", "fetch", "--json").stdout)
    assert fetched[0]["kept"] == 1
    w = Watcher(tmp_path, tiny_bundle_master, clear_all, "--dry-run")
    try:
        buf = io.BytesIO()
        known.resize((300, 225)).save(buf, "JPEG", quality=70)
        (w.mirror / "one.jpg").write_bytes(buf.getvalue())
        wait_until(lambda: (w.status() or {}).get("flagged") == 1, 30, "the listed picture to be flagged")
        feed.write_text(f"pdq {pdq(known)[0]}\npdq {pdq(later)[0]}\n")  # the exchange adds one
        fetched = json.loads(_cli(tmp_path, "hashlist", "fetch", "feed", "--json").stdout)
        assert fetched[0]["kept"] == 2
        buf = io.BytesIO()
        later.save(buf, "WEBP", quality=80)
        (w.mirror / "two.webp").write_bytes(buf.getvalue())
        wait_until(lambda: (w.status() or {}).get("flagged") == 2, 30, "the added hash to apply in the daemon")
    finally:
        code, stderr = w.stop()
    assert code == 0, stderr
    listed = json.loads(_cli(tmp_path, "hashlist", "subscriptions", "--json").stdout)
    assert listed[0]["name"] == "feed" and "2 signal(s) kept" in listed[0]["note"]


def test_the_static_sample_exchange_fetches_and_a_second_fetch_changes_nothing(tmp_path):
    assert _cli(tmp_path, "hashlist", "subscribe", "sample", "--exchange", "sample").returncode == 0
    first = json.loads(_cli(tmp_path, "hashlist", "fetch", "--json", check=True).stdout)[0]
    assert first["kept"] >= 10  # python-threatexchange's own example signals
    second = json.loads(_cli(tmp_path, "hashlist", "fetch", "--json", check=True).stdout)[0]
    assert second["kept"] == first["kept"]
    entries = json.loads(_cli(tmp_path, "hashlist", "list", "--json").stdout)
    assert entries[0]["name"] == "sample" and entries[0]["entries"] == first["kept"]
    assert _cli(tmp_path, "hashlist", "unsubscribe", "sample").returncode == 0
    assert json.loads(_cli(tmp_path, "hashlist", "list", "--json").stdout) == []


def test_push_to_an_hma_bank_sends_only_what_hma_takes_and_only_once(quarantined, tmp_path):
    from .hma_server import FakeHMA

    with FakeHMA() as hma:
        proc = _cli(tmp_path, "hashlist", "push", "--hma", hma.url, "--bank", "bad-name")
        assert proc.returncode == 2 and "UPPER_WITH_UNDERSCORE" in proc.stderr
        proc = _cli(tmp_path, "hashlist", "push", "--unreviewed", "--hma", hma.url, "--bank", "MIRROR_SCAN")
        assert proc.returncode == 2 and "no bank MIRROR_SCAN" in proc.stderr
        proc = _cli(tmp_path, "hashlist", "push", "--unreviewed", "--hma", hma.url, "--bank", "MIRROR_SCAN", "--create",
                    "--quarantine", str(tmp_path / "q"))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        contents = hma.banks["MIRROR_SCAN"]
        kinds = [set(c["signals"]) for c in contents]
        assert {"pdq"} in kinds and {"pdq", "video_md5"} in kinds  # the video: its PDQ and its file md5
        assert all("mirror-scan quarantine item" in c["note"] for c in contents)
        again = _cli(tmp_path, "hashlist", "push", "--unreviewed", "--hma", hma.url, "--bank", "MIRROR_SCAN",
                     "--quarantine", str(tmp_path / "q"))  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert f"nothing new to push to MIRROR_SCAN ({len(contents)} content item(s) pushed before)" in again.stdout
        assert len(hma.banks["MIRROR_SCAN"]) == len(contents)


def _reencoded(data: bytes, size: tuple[int, int]) -> bytes:
    import av

    frames = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_image().resize(size))
    return video_of(frames, codec="libx264")


def test_a_reencoded_video_matches_its_vpdq_entry_and_an_unrelated_one_does_not():
    scenes = [generated_image(40 + i // 10, 160, 120) for i in range(60)]  # six scenes of a second each
    original = video_of(scenes)
    first = decode(original, PREP, Limits())
    assert len(first.vpdq) == 6 and sum(q >= 50 for _, q, _ in first.vpdq) >= 4  # one a second
    matcher = Matcher([("videos", "flag", "vpdq", encode_vpdq(first.vpdq), "a known video")])
    again = decode(_reencoded(original, (120, 90)), PREP, Limits())
    match = matcher.match(None, None, [], again.vpdq)
    assert match is not None and match.kind == "vpdq" and match.frames_matched_percent >= 80
    unrelated = decode(video_of([generated_image(90 + i // 10, 160, 120) for i in range(60)]), PREP, Limits())
    assert matcher.match(None, None, [], unrelated.vpdq) is None
    assert matcher.match(None, None, [], again.vpdq[:1]) is not None  # a part: its frames are all in the entry


def test_vpdq_entries_flag_a_scanned_video(tmp_path, tiny_bundle_master, clear_all):
    scenes = [generated_image(50 + i // 10, 160, 120) for i in range(50)]
    original = video_of(scenes)
    features = decode(original, PREP, Limits()).vpdq
    listed = tmp_path / "videos.txt"
    listed.write_text(f"vpdq {encode_vpdq(features)}\n")
    assert _cli(tmp_path, "hashlist", "import", str(listed), "--name", "videos").returncode == 0
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "upload.mp4").write_bytes(_reencoded(original, (128, 96)))
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(clear_all),
                "--dry-run", "--json")  # fmt: skip
    assert json.loads(proc.stdout)["flagged"] == 1, proc.stderr
    (record,) = [json.loads(line) for line in _cli(tmp_path, "report", "--flagged").stdout.splitlines()]
    assert record["reason"].startswith("hash list videos, vpdq")
