"""The third adversarial review (issue 44), each finding repeated against the real thing: a real watch
daemon, real HTTP peers on loopback, the real CLI. Each test names the finding it answers."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from .conftest import CLI, run_cli
from .loopback import LoopbackHTTP
from .mediafiles import image_bytes
from .test_watch import Watcher


def _cli(tmp: Path, *args: str, **kwargs):
    return run_cli(*args, "--state", str(tmp / "state.db"), "--quarantine", str(tmp / "q"), **kwargs)


class Answers(LoopbackHTTP):
    """A peer that answers every request with one status and body (and keeps what it was sent)."""

    def __init__(self, status: int, body) -> None:
        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append(dict(self.headers))
                data = body(self) if callable(body) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer  # noqa: N815

        self._listen(Handler)


def _flag_three(tmp_path: Path, bundle: Path, policy: Path, *args: str) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    for i in range(3):
        (mirror / f"f{i}.png").write_bytes(image_bytes("PNG", 40 + i, size=(48, 32)))
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(bundle), "--policy", str(policy), *args)
    assert proc.returncode == 1, proc.stderr
    return mirror


# ----------------------------------------------------------------------------- 1. flagged, never acted on


def test_1_the_daemon_acts_on_flagged_files_no_action_was_taken_on(tmp_path, tiny_bundle_master, flag_all):
    """Flagged with no action (a dry run here; a move a kill rolled back is the same row): `status` lists
    them as unfinished work, and a watch daemon's first walk quarantines them, as `apply` would."""
    mirror = _flag_three(tmp_path, tiny_bundle_master, flag_all, "--dry-run")
    status = json.loads(run_cli("status", "--state", str(tmp_path / "state.db"), "--json").stdout)
    assert status["flagged_not_acted_on"] == 3
    watcher = Watcher(tmp_path, tiny_bundle_master, flag_all, "--observer", "none", mirror=mirror)
    try:
        watcher.wait_for(lambda: not any(mirror.iterdir()), 60, "the daemon to quarantine the flagged files")
    finally:
        code, stderr = watcher.stop()
    assert code == 0, stderr
    items = json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
    assert len(items) == 3 and {i["state"] for i in items} == {"quarantined"}
    status = json.loads(run_cli("status", "--state", str(tmp_path / "state.db"), "--json").stdout)
    assert status["flagged_not_acted_on"] == 0


def test_1_a_quarantined_file_put_back_by_hand_is_removed_again(tmp_path, tiny_bundle_master, flag_all):
    """A copy of quarantined bytes back at their path (put back by hand, or pulled again) was flagged and
    left in place: the ledger kept the earlier "quarantined" action for the same bytes. It is removed again
    under its item (its bytes are there), no second item made; a restored file is left alone."""
    mirror = _flag_three(tmp_path, tiny_bundle_master, flag_all)
    items = {Path(i["original"]).name: i for i in json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)}
    assert not any(mirror.iterdir()) and len(items) == 3
    (mirror / "f0.png").write_bytes(image_bytes("PNG", 40, size=(48, 32)))  # the same bytes, back by hand
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all))
    assert proc.returncode == 1, proc.stderr
    assert not (mirror / "f0.png").exists()
    assert len(json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)) == 3
    assert _cli(tmp_path, "quarantine", "restore", items["f1.png"]["id"]).returncode == 0
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all))
    assert (mirror / "f1.png").exists(), proc.stderr  # restored: allowlisted, meant to be here


# ----------------------------------------------------------------------------- 6. deeply nested JSON


def test_6_deeply_nested_json_from_a_peer_is_no_answer_never_a_crash(tmp_path):
    from mirror_scan.clients.http import exchange, peer_json

    deep = b"[" * 100_000 + b"]" * 100_000
    assert peer_json(deep) is None and peer_json(b'{"a": [[{"b": 1}]]}') == {"a": [[{"b": 1}]]}
    assert peer_json(b"[" * 65 + b"]" * 65) is None and peer_json(b"[" * 64 + b"]" * 64) is not None
    with Answers(200, deep) as peer:
        assert exchange("GET", peer.url, {}, None, timeout=10) == (200, None)
        env = {"MIRROR_SCAN_PICTRS_URL": peer.url, "MIRROR_SCAN_PICTRS_API_KEY": "key-" + "k" * 20}
        proc = run_cli("pictrs", "check", env=env)
        assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 2), proc.stderr
        config = tmp_path / "config.toml"
        config.write_text(f'[lemmy]\nurl = "{peer.url}"\nusername = "bot"\n')
        proc = run_cli("lemmy", "check", "--config", str(config), env={"MIRROR_SCAN_LEMMY_PASSWORD": "pw-" + "p" * 20})
        assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, proc.stderr
        assert proc.returncode != 0 and "Lemmy" in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- 7 and 10. HMA's words


@pytest.mark.parametrize("how", ["env", "file"])
def test_7_10_an_hma_proxy_that_echoes_the_request_gets_neither_its_token_nor_its_newlines_printed(
    tmp_path, tiny_bundle_master, flag_all, how
):
    token = "hma-bearer-" + "t" * 24

    def echo(handler) -> bytes:  # a proxy's error page that quotes the request it refused
        quoted = "\n".join(f"{k}: {v}" for k, v in handler.headers.items())
        return json.dumps({"message": f"upstream refused:\n{quoted}\nforged: pushed 0 content items"}).encode()

    _flag_three(tmp_path, tiny_bundle_master, flag_all)
    env, extra = {}, []
    if how == "env":
        env["MIRROR_SCAN_HMA_TOKEN"] = token
    else:
        (tmp_path / "token").write_text(token + "\n")
        extra = ["--token-file", str(tmp_path / "token")]
    with Answers(502, echo) as proxy:
        proc = _cli(
            tmp_path, "hashlist", "push", "--unreviewed", "--hma", proxy.url, "--bank", "MIRROR_SCAN", *extra, env=env
        )
        assert proxy.seen and proxy.seen[0]["Authorization"] == f"Bearer {token}"  # it really was sent
    assert proc.returncode != 0
    assert "upstream refused" in proc.stderr, proc.stderr  # HMA's words are said...
    assert token not in proc.stdout + proc.stderr  # ...without the token
    assert not any(line.startswith("forged:") for line in (proc.stdout + proc.stderr).splitlines())


def test_10_names_stay_on_their_line_in_quarantine_list(tmp_path, tiny_bundle_master, flag_all):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for i, name in enumerate(["line\nforged: log.png", "sep\u2028forged2.png", "zero\u200bwidth.png"]):
        (mirror / name).write_bytes(image_bytes("PNG", 50 + i, size=(40, 30)))
    assert _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy",
                str(flag_all)).returncode == 1  # fmt: skip
    listed = _cli(tmp_path, "quarantine", "list").stdout
    lines = listed.splitlines()
    assert len(lines) == 4, listed  # three items and the count
    assert not any(line.startswith("forged") for line in lines)
    assert "\u2028" not in listed and "\u200b" not in listed and "\\u2028" in listed


def test_10_the_text_helpers_escape_separators_and_invisible_characters():
    from mirror_scan.text import one_line, printable

    for hidden in ("\u2028", "\u2029", "\u200b", "\u200d", "\u2060", "\ufeff", "\u00ad"):
        assert hidden not in one_line(f"a{hidden}b") and hidden not in printable(f"a{hidden}b")
    assert printable("caf\u00e9 \u65e5\u672c\n") == "caf\u00e9 \u65e5\u672c\n"


# ----------------------------------------------------------------------------- 8. one watch per mirror


def test_8_a_second_watch_of_the_same_mirror_with_another_state_is_refused(tmp_path, tiny_bundle_master, flag_all):
    first = Watcher(tmp_path, tiny_bundle_master, flag_all, "--dry-run")
    try:
        other = tmp_path / "other"
        other.mkdir()
        proc = subprocess.run(
            [*CLI, "watch", "--mirror", str(first.mirror), "--model", str(tiny_bundle_master), "--policy",
             str(flag_all), "--state", str(other / "state.db"), "--quarantine", str(other / "q"), "--dry-run"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "another `mirror-scan watch`" in proc.stderr and "another state database" in proc.stderr
        assert first.proc.poll() is None
    finally:
        code, stderr = first.stop()
    assert code == 0, stderr


# ----------------------------------------------------------------------------- 9. an empty state file


def test_9_an_empty_state_file_named_alone_is_never_a_fresh_start(tmp_path):
    state = tmp_path / "state.db"
    state.write_bytes(b"")
    for args in (("allowlist", "add", "b" * 64), ("state", "check"), ("quarantine", "list")):
        proc = run_cli(*args, "--state", str(state))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "empty (0 bytes)" in proc.stderr and "remove the empty file" in proc.stderr, proc.stderr
    assert state.read_bytes() == b""


# ----------------------------------------------------------------------------- 11. a purge cut short


def test_11_a_rerun_of_a_purge_cut_short_finishes_what_is_left(tmp_path, tiny_bundle_master, flag_all):
    _flag_three(tmp_path, tiny_bundle_master, flag_all)
    ids = [i["id"] for i in json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)]
    proc = _cli(tmp_path, "quarantine", "purge", *ids, "--yes", env={"MIRROR_SCAN_KILL_AT": "purge:recorded"})
    assert proc.returncode == -9
    again = _cli(tmp_path, "quarantine", "purge", *ids, "--yes", "--json")
    assert again.returncode == 0, again.stderr
    answer = json.loads(again.stdout)
    assert len(answer["already_purged"]) == 1 and len(answer["purged"]) == 2
    assert sorted(answer["already_purged"] + answer["purged"]) == sorted(ids)
    states = {i["state"] for i in json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)}
    assert states == {"purged"}
    assert not [p for p in (tmp_path / "q" / "items").rglob("data")]  # every purged item's bytes deleted
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT count(*) FROM moves WHERE step NOT IN ('done', 'rolled_back')").fetchone()[0] == 0


# ----------------------------------------------------------------------------- 12. the corpus


def _tiff_with_associated_alpha() -> bytes:
    """A greyscale TIFF whose alpha is associated (premultiplied: ExtraSamples = 1), as scanners and
    GIMP write them; Pillow opens it as mode "La". Written by Pillow as LA, then its ExtraSamples set to 1."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(12).integers(0, 255, (40, 50, 2), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "LA").save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = int.from_bytes(data[4:8], "little")
    for i in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        if int.from_bytes(data[entry : entry + 2], "little") == 338:  # ExtraSamples
            data[entry + 8] = 1  # associated alpha
    return bytes(data)


def test_12_a_tiff_with_associated_alpha_is_scored(tmp_path, tiny_bundle_master, flag_all):
    import io

    from PIL import Image

    data = _tiff_with_associated_alpha()
    assert Image.open(io.BytesIO(data)).mode == "La"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "scan.tif").write_bytes(data)
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--dry-run", "--json")  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 0 and summary["flagged"] == 1, (summary, proc.stderr)


def _png_with_bad_text_crc() -> bytes:
    """A PNG whose tEXt chunk before IDAT has a wrong CRC: browsers skip the chunk and draw the picture."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(__import__("numpy").random.default_rng(2).integers(0, 255, (30, 40, 3), dtype="uint8")).save(
        buf, "PNG"
    )
    png = buf.getvalue()
    payload = b"Comment\x00made by hand"
    crc = zlib.crc32(b"tEXt" + payload) ^ 0xFFFF
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", crc)
    return png[:33] + chunk + png[33:]


def test_2_12_a_png_with_a_bad_crc_in_its_text_before_idat_is_scored_and_corrupt_pngs_say_so(
    tmp_path, tiny_bundle_master, flag_all
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "bad-crc.png").write_bytes(_png_with_bad_text_crc())
    (mirror / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--dry-run", "--report", str(tmp_path / "report.jsonl"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "report.jsonl").read_text().splitlines())}
    assert rows["bad-crc.png"]["verdict"] == "flagged", rows["bad-crc.png"]
    assert rows["junk.png"]["status"] == "error" and "corrupt or truncated png" in rows["junk.png"]["reason"]


# ----------------------------------------------------------------------------- 4. the console's connections


def test_4_the_console_bounds_its_connections_and_times_every_request_head(tmp_path):
    """300 connections each trickling a partial request head (more than the cap of 256), and one more
    trickling a byte a second: the console still answers a login page at once, drops the oldest past the
    cap, and closes the trickler when its head is not complete within 10 s; its log says so, briefly."""
    import select
    import socket
    import time

    from .console_client import ConsoleServer, add_user

    add_user(lambda *a: run_cli(*a, "--state", str(tmp_path / "state.db")), "alice", tmp_path)
    server = ConsoleServer(tmp_path / "state.db", tmp_path / "q")
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: console\r\nX-Slow: ")
            held.append(sock)

        def closed(sock: socket.socket) -> bool:
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                return bool(readable) and sock.recv(1) == b""
            except OSError:  # reset
                return True

        # Every one of them reached the server (the listen queue can hold some back): past the cap, dropped.
        deadline = time.monotonic() + 8
        while sum(map(closed, held)) < len(held) - 256 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(map(closed, held)) >= len(held) - 256
        started = time.monotonic()
        answer = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        answer.request("GET", "/login")
        assert answer.getresponse().status == 200
        assert time.monotonic() - started < 5
        trickler = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        closed_after = None
        for second in range(20):
            try:
                trickler.sendall(b"GET /login HTTP/1.1\r\nX-Slow: " if second == 0 else b"x")
                readable, _, _ = select.select([trickler], [], [], 0)
                if readable and trickler.recv(1) == b"":
                    closed_after = second
                    break
            except OSError:  # reset: dropped
                closed_after = second
                break
            time.sleep(1)
        assert closed_after is not None and 8 <= closed_after <= 14, closed_after
        assert all(closed(sock) for sock in held)  # past the cap, then at the head deadline: every one of them
    finally:
        for sock in held:
            sock.close()
        log = server.stop()
    assert "closed" in log and "connection(s)" in log
    assert log.count("closed") < 20  # said briefly, not once per connection


# ----------------------------------------------------------------------------- 5. serve beside a hung decoder


def test_5_serve_answers_every_upload_in_time_while_decoders_hang_and_stops_at_once(
    tmp_path, tiny_bundle_master, monkeypatch
):
    """Four uploads whose decoders hang for good (a test hook in the worker) and a normal one sent meanwhile,
    with two decoder workers and the default 60 s decode timeout: each gets its answer by --answer-within
    (accepted unchecked, the overload policy), and SIGTERM stops the validator within seconds."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mirror_scan.scan.decoders.decodepool import TEST_HOOK

    from .test_serve import Validator

    monkeypatch.setenv(TEST_HOOK, "hang")
    monkeypatch.setenv("MIRROR_SCAN_WORKERS", "2")
    validator = Validator(tmp_path, tiny_bundle_master, "--answer-within", "3", "--on-overload", "accept")
    hanging = b"\x89PNG\r\n\x1a\nMIRROR-SCAN-TEST hang"
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(validator.post, [hanging] * 4 + [image_bytes("PNG", 7, size=(40, 30))]))
        elapsed = time.monotonic() - started
        assert elapsed < 10, (elapsed, answers)
        assert all(status == 200 for status, _ in answers), answers
        assert sum("not checked" in body.get("note", "") for _, body in answers) >= 4, answers
    finally:
        stopping = time.monotonic()
        code, stderr = validator.stop()
    assert time.monotonic() - stopping < 15, stderr
    assert code == 0, stderr


def test_2_the_salvage_readers_refuse_malformed_headers_without_raising():
    """Found by mutating the headers of the salvage paths' inputs: a progressive JPEG whose frame header
    counts more components than it holds, and a cut BMP of depth 0, raised (struct.error,
    ZeroDivisionError) instead of saying the file is not one they read."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    from mirror_scan.scan.decoders import bmpread, jpegdc
    from mirror_scan.scan.decoders.decode import Limits, decode

    from .browserdiff import PREP, _bmp, picture

    buf = io.BytesIO()
    Image.fromarray(picture(np.random.default_rng(3))).save(buf, "JPEG", quality=90, progressive=True)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc2")
    data[sof + 9] = 200  # the component count: far more than the header's bytes hold
    cut = bytes(data[: len(data) // 3])
    assert jpegdc.first_scan(cut, 10**8) is None
    assert isinstance(decode(cut, PREP, Limits()), str)
    bmp = bytearray(_bmp(picture(np.random.default_rng(4)), 24))
    bmp[28:30] = struct.pack("<H", 0)  # depth 0
    with pytest.raises(bmpread.BmpRefused):
        bmpread.read_bmp(bytes(bmp[: len(bmp) // 2]), 10**8)


def _heic(picture) -> bytes:
    import io

    buf = io.BytesIO()
    picture.save(buf, "HEIF", quality=90)
    return buf.getvalue()


def _compact_heif(picture) -> bytes:
    """The same picture in HEIF's compact form (ISO/IEC 23008-12 Annex O, brand 'mif3': one 'mini' box in
    place of 'meta'), written as libheif's libheif/mini.cc (9f31998) reads it: no alpha, ICC, Exif, XMP or
    HDR; 4:2:0 with centred chroma; the HEVC configuration and data of a HEIC pillow-heif wrote."""
    from mirror_scan.scan.decoders.heif import parse

    heic = parse(_heic(picture))
    config, data = heic.properties(heic.primary)[b"hvcC"], heic.payloads[heic.primary]
    width, height = picture.size
    large = max(width, height) > 128
    fields = [(0, 2), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1)]  # version .. xmp
    fields += [(1, 2), (0, 3), (int(large), 1), (width - 1, 15 if large else 7), (height - 1, 15 if large else 7)]
    fields += [(1, 1), (1, 1), (0, 1)]  # chroma centred both ways; 8 bits
    fields += [(1, 1), (1, 1), (len(config), 12), (len(data) - 1, 28)]  # large sizes
    bits = "".join(format(value, f"0{count}b") for value, count in fields)
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big") + config + data
    return b"\0\0\0\x10ftypmif3heic" + (8 + len(payload)).to_bytes(4, "big") + b"mini" + payload


def test_12_compact_heif_and_heif_without_ispe_are_scored_and_still_bounded(tmp_path, tiny_bundle_master):
    import numpy as np
    from PIL import Image

    from mirror_scan.scan.decoders.decode import decode
    from mirror_scan.scan.decoders.decoded import Limits
    from mirror_scan.scan.decoders.heif import stated_size

    from .test_formats import Probe, signal

    probe = Probe(tiny_bundle_master)
    prep = probe.prep
    picture = signal(96, 64)
    no_ispe = _heic(picture).replace(b"ispe", b"xspe", 1)  # the property is there under a name no one reads
    for data in (_compact_heif(picture), no_ispe):
        decoded = decode(data, prep)
        assert not isinstance(decoded, str), decoded
        whole = decode(_heic(picture), prep)
        assert decoded.format == "heif" and np.abs(decoded.pixels - whole.pixels).max() < 1e-4
    # Without ispe, the size the HEVC parameters state (coded in 8x8 units: 96x64) is checked first.
    assert stated_size(no_ispe) == (96, 64)
    refused = decode(no_ispe, prep, Limits(max_pixels=96 * 64 - 1))
    assert isinstance(refused, str) and "96x64 pixels, over the limit" in refused, refused
    big = _heic(Image.new("RGB", (1000, 700), (20, 40, 60))).replace(b"ispe", b"xspe", 1)
    assert stated_size(big)[0] >= 1000 and isinstance(decode(big, prep, Limits(max_pixels=500_000)), str)


def _tiff_with_a_tag_libtiff_warns_about() -> bytes:
    """An LZW TIFF (decoded by libtiff) with a private tag of a type that does not exist: libtiff skips the
    tag and prints a warning to stderr, as it did for 6 files of the corpus."""
    import io
    import struct

    import numpy as np
    from PIL import Image, TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[65000] = "private"
    info.tagtype[65000] = 2
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 60, 3), dtype="uint8")).save(
        buf, "TIFF", compression="tiff_lzw", tiffinfo=info
    )
    data = bytearray(buf.getvalue())
    at = data.find(struct.pack("<HH", 65000, 2))
    data[at + 2 : at + 4] = struct.pack("<H", 99)
    return bytes(data)


def test_12_libtiff_warnings_stay_out_of_the_log_and_a_raw_camera_file_says_what_it_is(
    tmp_path, tiny_bundle_master, flag_all
):
    from .mediafiles import video

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "scan.tif").write_bytes(_tiff_with_a_tag_libtiff_warns_about())
    # A Canon CR3 is an ISO media file (brand 'crx ') whose track holds raw sensor data no decoder knows:
    # an mp4 whose sample entry is renamed 'CRAW' and whose decoder configuration is gone.
    mp4 = video("mp4", "mpeg4", frames=3)
    cr3 = mp4.replace(b"mp4v", b"CRAW").replace(b"esds", b"xsds")
    (mirror / "IMG_0001.CR3").write_bytes(cr3[:8] + b"crx " + cr3[12:])
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--dry-run", "--quiet", "--report", str(tmp_path / "report.jsonl"), process=True)  # fmt: skip
    rows = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "report.jsonl").read_text().splitlines())}
    assert rows["scan.tif"]["verdict"] == "flagged", rows
    assert rows["IMG_0001.CR3"]["status"] == "error", rows["IMG_0001.CR3"]
    assert (
        "unsupported video codec" in rows["IMG_0001.CR3"]["reason"] and "NoneType" not in rows["IMG_0001.CR3"]["reason"]
    )
    assert "TIFF" not in proc.stderr and "tag" not in proc.stderr, proc.stderr
