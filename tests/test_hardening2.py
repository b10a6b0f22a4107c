"""The second adversarial review (issue 31), each attack repeated against the real thing: the ledger, files
from outside the mirror, restore's trust, hangs, secrets and injection at every output."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, run_cli
from .mediafiles import image_bytes


def _cli(tmp: Path, *args: str, env: dict | None = None, **kwargs):
    return run_cli(*args, "--state", str(tmp / "state.db"), "--quarantine", str(tmp / "q"), env=env, **kwargs)


@pytest.fixture
def quarantined(tmp_path, tiny_bundle_master, flag_all):
    """Three files flagged and quarantined, one restored (allowlisted): a ledger worth losing."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for i in range(3):
        (mirror / f"f{i}.png").write_bytes(image_bytes("PNG", i))
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all))
    assert proc.returncode == 1, proc.stderr
    items = json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
    assert _cli(tmp_path, "quarantine", "restore", items[0]["id"]).returncode == 0
    state = tmp_path / "state.db"
    with sqlite3.connect(state) as db:  # everything into the main file, as after any clean stop
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return mirror, items, state


# ----------------------------------------------------------------------------- the ledger


def _table_pages(state: Path, table: str) -> list[int]:
    """Page numbers of a table's b-tree, found by walking it (page 1 holds the schema)."""
    data = state.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    pages, todo = [], [root]
    while todo:
        number = todo.pop()
        pages.append(number)
        page = data[(number - 1) * page_size : number * page_size]
        offset = 100 if number == 1 else 0
        if page[offset] == 0x05:  # interior table page: children, then the right-most pointer
            cells = int.from_bytes(page[offset + 3 : offset + 5], "big")
            for i in range(cells):
                at = int.from_bytes(page[offset + 12 + 2 * i : offset + 14 + 2 * i], "big")
                todo.append(int.from_bytes(page[at : at + 4], "big"))
            todo.append(int.from_bytes(page[offset + 8 : offset + 12], "big"))
    return pages


@pytest.mark.parametrize("table", ["quarantine", "allowlist", "files"])
def test_damage_inside_pages_under_an_intact_header_refuses_every_command(quarantined, tmp_path, tiny_bundle_master,
                                                                           table):  # fmt: skip
    mirror, items, state = quarantined
    before = state.read_bytes()
    page_size = int.from_bytes(before[16:18], "big")
    (page,) = _table_pages(state, table)[:1]
    damaged = bytearray(before)
    start = (page - 1) * page_size
    damaged[start + 8 : start + page_size - 8] = bytes(range(256)) * ((page_size - 16) // 256) + b"\xff" * (
        (page_size - 16) % 256
    )
    state.write_bytes(bytes(damaged))
    assert damaged[:100] == before[:100]  # the header is intact
    for args in (
        ("allowlist", "add", "a" * 64),
        ("scan", str(mirror), "--model", str(tiny_bundle_master)),
        ("report",),
        ("quarantine", "list"),
        ("state", "check"),
    ):
        # Each a process of its own, as an admin runs them: the pages are checked once per process (this
        # test's own process read the state before it was damaged).
        where = ("--state", str(state)) if args[0] in ("report", "state") else ("--state", str(state), "--quarantine",
                                                                                  str(tmp_path / "q"))  # fmt: skip
        proc = run_cli(*args, *where, process=True)
        assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "damaged" in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "state rebuild" in proc.stderr, (args, proc.stderr)
    assert state.read_bytes() == bytes(damaged)  # nothing wrote to it


def test_a_state_truncated_to_nothing_is_damage_when_the_quarantine_holds_items(quarantined, tmp_path):
    mirror, items, state = quarantined
    for suffix in ("-wal", "-shm"):
        state.with_name(state.name + suffix).unlink(missing_ok=True)
    state.write_bytes(b"")
    for args in (("allowlist", "add", "b" * 64), ("quarantine", "list"), ("quarantine", "restore", items[1]["id"])):
        proc = _cli(tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "empty (0 bytes)" in proc.stderr and "state rebuild" in proc.stderr, proc.stderr
    proc = run_cli("state", "check", "--state", str(state), "--quarantine", str(tmp_path / "q"))
    assert proc.returncode == 2 and "empty (0 bytes)" in proc.stderr, proc.stderr
    assert state.read_bytes() == b""
    # The way back: rebuild from the quarantine's metadata keeps the index and the restored item's allowlisting.
    rebuilt = _cli(tmp_path, "state", "rebuild", "--yes")
    assert rebuilt.returncode == 0, rebuilt.stderr
    allowed = _cli(tmp_path, "allowlist", "list").stdout
    assert items[0]["sha256"] in allowed
    assert len(json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)) == 3


def test_a_busy_ledger_is_busy_never_damaged(quarantined, tmp_path):
    mirror, items, state = quarantined
    holder = subprocess.Popen(
        [*CLI[:1], "-c", "import sqlite3,sys,time\n"
         "db=sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(60)", str(state)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        proc = _cli(tmp_path, "allowlist", "add", "c" * 64, timeout=120)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 75, (proc.returncode, proc.stderr)
    assert "busy" in proc.stderr and "try again" in proc.stderr, proc.stderr
    assert "damaged" not in proc.stderr and "rebuild" not in proc.stderr
    assert waited < 40
    assert _cli(tmp_path, "allowlist", "add", "c" * 64).returncode == 0  # and then it works


# ----------------------------------------------------------------------------- files from outside the mirror


def test_a_directory_swapped_for_a_symlink_is_never_read_or_moved_through(tmp_path):
    """Each step of the race, deterministically: after discovery, after the read, before the move."""
    import os

    from mirror_scan.scan.read import Failed, read_stable
    from mirror_scan.store.discover import Found, Unscannable, discover
    from mirror_scan.store.items import QuarantineError
    from mirror_scan.store.ledger import Ledger
    from mirror_scan.store.quarantine import Quarantine

    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    (mirror / "d").mkdir(parents=True)
    (outside / "d").mkdir(parents=True)
    (mirror / "d" / "a.png").write_bytes(b"mirror bytes")
    (outside / "d" / "a.png").write_bytes(b"outside bytes")
    found = next(f for f in discover([mirror]) if isinstance(f, Found))
    os.rename(mirror / "d", mirror / "d.real")
    os.symlink(outside / "d", mirror / "d")
    outcome = read_stable(found, 1 << 20)
    assert isinstance(outcome, Failed) and "symbolic link" in outcome.reason, outcome
    # Discovery itself reports the link and lists nothing through it.
    listed = list(discover([mirror]))
    assert Unscannable(str(mirror / "d"), "symbolic link: never followed, not scanned") in listed
    assert all(not (isinstance(f, Found) and "outside" in Path(f.path).read_bytes().decode()) for f in listed)
    ledger = Ledger(tmp_path / "state.db")
    store = Quarantine(tmp_path / "q", ledger)
    import hashlib

    with pytest.raises(QuarantineError, match="symbolic link"):
        store.quarantine(os.fsencode(found.path), os.fsencode(mirror), hashlib.sha256(b"outside bytes").hexdigest(),
                         {"verdict": None})  # fmt: skip
    ledger.close()
    assert (outside / "d" / "a.png").read_bytes() == b"outside bytes"
    assert not any((tmp_path / "q" / "items").iterdir())


def test_scan_while_a_directory_is_swapped_for_a_symlink_never_takes_outside_files(tmp_path, tiny_bundle_master,
                                                                                     flag_all):  # fmt: skip
    """The attack as it was run: while a flag-everything scan runs, a mirror directory is replaced by a
    symlink to a directory outside that holds files of the same names (once, at a different moment each
    time, then flipping back and forth). Nothing outside is read, scored or moved into the quarantine; the
    outside directory is left as it was."""
    import hashlib
    import os
    import threading

    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    outside_bytes = {}
    for i in range(150):
        for root, seed in ((mirror, i), (outside, 500 + i)):
            (root / "d").mkdir(parents=True, exist_ok=True)
            data = image_bytes("PNG", seed, size=(40, 30))
            (root / "d" / f"f{i:03d}.png").write_bytes(data)
            if root is outside:
                outside_bytes[f"f{i:03d}.png"] = data
    outside_shas = {hashlib.sha256(d).hexdigest() for d in outside_bytes.values()}

    def swap_once(after_s: float, flips: int) -> None:
        time.sleep(after_s)
        os.rename(mirror / "d", mirror / "d.real")
        os.symlink(outside / "d", mirror / "d")
        for _ in range(flips):
            time.sleep(0.01)
            os.unlink(mirror / "d")
            os.rename(mirror / "d.real", mirror / "d")
            time.sleep(0.01)
            os.rename(mirror / "d", mirror / "d.real")
            os.symlink(outside / "d", mirror / "d")

    for attempt, (after_s, flips) in enumerate(((1.0, 0), (1.5, 0), (1.2, 100))):
        if (mirror / "d.real").exists():  # put the mirror back as it was for the next round
            os.unlink(mirror / "d")
            os.rename(mirror / "d.real", mirror / "d")
        (tmp_path / "state.db").unlink(missing_ok=True)
        swapper = threading.Thread(target=swap_once, args=(after_s, flips))
        swapper.start()
        try:
            proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all))
        finally:
            swapper.join()
        assert "Traceback" not in proc.stderr, proc.stderr
        assert {p.name: p.read_bytes() for p in (outside / "d").iterdir()} == outside_bytes, attempt  # untouched
        for item in (tmp_path / "q" / "items").iterdir():
            assert hashlib.sha256((item / "data").read_bytes()).hexdigest() not in outside_shas, attempt
        for line in _cli(tmp_path, "report", "--format", "jsonl").stdout.splitlines():
            assert json.loads(line)["sha256"] not in outside_shas, (attempt, line)  # never scored as the mirror's


# ----------------------------------------------------------------------------- restore trusts what it should check


def _edit_meta(item_dir: Path, **changes) -> None:
    meta = json.loads((item_dir / "meta.json").read_text())
    (item_dir / "meta.json").write_text(json.dumps({**meta, **changes}))


def test_reindex_never_lets_edited_metadata_override_a_healthy_ledger(quarantined, tmp_path):
    import base64
    import hashlib

    mirror, items, state = quarantined
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved, swapped = (tmp_path / "q" / "items" / items[i]["id"] for i in (1, 2))
    _edit_meta(moved, mirror_root=str(elsewhere), mirror_root_b64=base64.b64encode(bytes(elsewhere)).decode())
    foreign = image_bytes("PNG", 77)
    (swapped / "data").write_bytes(foreign)
    _edit_meta(swapped, sha256=hashlib.sha256(foreign).hexdigest(), size=len(foreign))
    proc = _cli(tmp_path, "quarantine", "reindex")
    assert proc.returncode == 0, proc.stderr
    assert "indexed 0 item(s)" in proc.stdout
    assert f"{items[1]['id']}: its metadata file disagrees with the ledger on mirror_root" in proc.stderr
    assert f"{items[2]['id']}: its metadata file disagrees with the ledger on sha256, size" in proc.stderr
    for item in items[1:]:
        restored = _cli(tmp_path, "quarantine", "restore", item["id"])
        assert restored.returncode == 2 and "disagrees with the ledger" in restored.stderr, restored.stderr
    assert list(elsewhere.iterdir()) == []
    assert hashlib.sha256(foreign).hexdigest() not in _cli(tmp_path, "allowlist", "list").stdout


def test_a_rebuild_imports_only_items_that_pass_a_restores_checks(quarantined, tmp_path):
    import hashlib

    mirror, items, state = quarantined
    swapped = tmp_path / "q" / "items" / items[2]["id"]
    (swapped / "data").write_bytes(b"other bytes")  # sha256 in the metadata left as it was
    escaping = tmp_path / "q" / "items" / items[1]["id"]
    _edit_meta(escaping, original="../../etc/passwd", original_b64="Li4vLi4vZXRjL3Bhc3N3ZA==")
    proc = _cli(tmp_path, "state", "rebuild", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert f"{items[2]['id']}: its bytes are missing or do not hash to its recorded sha256" in proc.stderr
    assert f"{items[1]['id']}: stored path" in proc.stderr and "'..'" in proc.stderr
    listed = json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
    assert [i["id"] for i in listed] == [items[0]["id"]]
    assert hashlib.sha256(b"other bytes").hexdigest() not in _cli(tmp_path, "allowlist", "list").stdout
    # With the mirror named, an item from anywhere else is not imported either.
    other = tmp_path / "other"
    other.mkdir()
    proc = _cli(tmp_path, "state", "rebuild", "--yes", "--mirror-root", str(other))
    assert proc.returncode == 0 and "not the mirror given" in proc.stderr, proc.stderr
    assert json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout) == []


# ----------------------------------------------------------------------------- hangs


class Trickle:
    """An HTTP server that answers one byte every `every` seconds: each byte restarts a socket timeout."""

    def __init__(self, every: float = 1.0) -> None:
        import socket
        import threading

        self.every = every
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)  # accept() wakes to see stop(): closing the socket alone does not wake it
        self.stopping = threading.Event()
        self.accepted = 0
        self.threads = [threading.Thread(target=self._serve, name="trickle")]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _serve(self) -> None:
        import threading

        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(None)
            worker = threading.Thread(target=self._trickle, args=(conn,), name="trickle")
            self.threads.append(worker)
            worker.start()

    def _trickle(self, conn) -> None:
        answer = (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"ok": "' + b"x" * 400
        )
        try:
            conn.settimeout(30)
            conn.recv(65536)
            for byte in answer:
                if self.stopping.wait(self.every):
                    break
                conn.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.sock.close()


def test_an_answer_trickled_a_byte_at_a_time_is_cut_off_at_the_exchange_deadline():
    from mirror_scan.clients.http import Unreachable, exchange

    server = Trickle(every=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(Unreachable, match="no complete answer within 2 s"):
            exchange("POST", server.url, {"Content-Type": "application/json"}, b"{}", timeout=2.0)
        assert time.monotonic() - started < 4.0
    finally:
        server.stop()


def test_a_trickling_webhook_never_holds_up_scan(tmp_path, tiny_bundle_master, flag_all):
    server = Trickle(every=2.0)
    config = tmp_path / "config.toml"
    config.write_text(f'[notify]\nwebhook = "{server.url}"\n\n[actions]\n"*" = ["notify"]\n')
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for i in range(3):
        (mirror / f"f{i}.png").write_bytes(image_bytes("PNG", i))
    try:
        started = time.monotonic()
        proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                    "--config", str(config), timeout=300)  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stderr
    assert server.accepted >= 1  # the webhook was really tried
    assert elapsed < 45, (elapsed, proc.stderr)  # 10 s per exchange, then the service is skipped for the round
    assert len(json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)) == 3


# ----------------------------------------------------------------------------- secrets and injection

HOSTILE_NAMES = ["clear\x1b[2J\x1b[31mred.png", "csi\u009b31m.png", "line\nforged: log.png", "rtl\u202egnp.exe.png",
                 "=HYPERLINK(\"http-evil\").png", "+cmd.png", "@sum.png", "del\x7f.png"]  # fmt: skip
RAW_CONTROLS = ["\x1b", "\u009b", "\u202e", "\x7f"]


def _assert_inert(text: str, where: str) -> None:
    for raw in RAW_CONTROLS:
        assert raw not in text, (where, raw, text[:2000])


def test_names_and_notes_chosen_by_others_are_inert_at_every_output(tmp_path, tiny_bundle_master, flag_all):
    import csv
    import io
    import os

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for i, name in enumerate(HOSTILE_NAMES):
        (mirror / name).write_bytes(image_bytes("PNG", 40 + i))
    report = tmp_path / "report.csv"
    scan = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *CLI, "-v", "scan", str(mirror),
         "--model", str(tiny_bundle_master), "--policy", str(flag_all), "--dry-run",
         "--report", str(report), "--report-format", "csv",
         "--state", str(tmp_path / "state.db"), "--quarantine", str(tmp_path / "q")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert scan.returncode == 1, scan.stderr
    _assert_inert(scan.stdout + scan.stderr, "scan")
    assert oct(os.stat(report).st_mode & 0o777) == "0o600"  # private whatever the umask
    for path in (report,):
        text = path.read_text()
        _assert_inert(text, "report file")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(HOSTILE_NAMES)
    # A cell that starts like a formula (an object key, a reason, an uploader's name) stays text.
    from mirror_scan.scan.report import ReportWriter

    writer = ReportWriter(tmp_path / "formula.csv", "csv")
    writer.write({"path": '=HYPERLINK("x")', "reason": "+1", "uploader": "@everyone", "size": 5})
    writer.close()
    (row,) = csv.DictReader(io.StringIO((tmp_path / "formula.csv").read_text()))
    assert (row["path"], row["reason"], row["uploader"]) == ('\'=HYPERLINK("x")', "'+1", "'@everyone")
    assert row["size"] == "5"

    def state_only(*args):
        return run_cli(*args, "--state", str(tmp_path / "state.db"))

    out = state_only("report", "--format", "csv", "--out", str(tmp_path / "again.csv"))
    assert out.returncode == 0 and oct(os.stat(tmp_path / "again.csv").st_mode & 0o777) == "0o600"
    for args in (("report",), ("report", "--format", "csv"), ("report", "--flagged")):
        proc = state_only(*args)
        _assert_inert(proc.stdout + proc.stderr, " ".join(args))
        # JSON stays JSON and still names the file exactly
        if args == ("report",):
            paths = {json.loads(line)["path"] for line in proc.stdout.splitlines()}
            assert {os.path.basename(p) for p in paths} == set(HOSTILE_NAMES)
    applied = _cli(tmp_path, "apply")
    _assert_inert(applied.stdout + applied.stderr, "apply")
    for args in (("quarantine", "list"), ("quarantine", "list", "--json")):
        proc = _cli(tmp_path, *args)
        assert proc.returncode == 0
        _assert_inert(proc.stdout + proc.stderr, " ".join(args))
    items = json.loads(_cli(tmp_path, "quarantine", "list", "--json").stdout)
    assert {os.path.basename(i["original"]) for i in items} == set(HOSTILE_NAMES)
    show = _cli(tmp_path, "quarantine", "show", items[0]["id"])
    _assert_inert(show.stdout, "quarantine show")
    show = _cli(tmp_path, "quarantine", "show", items[0]["id"], "--json")
    _assert_inert(show.stdout, "quarantine show --json")
    json.loads(show.stdout)  # still JSON

    listed = tmp_path / "list.csv"
    listed.write_text('type,hash,note\npdq,' + "ab" * 32 + ',"\x1b]0;owned\x07 =1+2"\nmd5,' + "cd" * 16
                      + ',=HYPERLINK("x")\n')  # fmt: skip
    assert state_only("hashlist", "import", str(listed), "--name", "\u202eevil").returncode == 0
    for args in (("hashlist", "list"), ("hashlist", "show", "\u202eevil")):
        proc = run_cli(*args, "--state", str(tmp_path / "state.db"))
        assert proc.returncode == 0, proc.stderr
        _assert_inert(proc.stdout, " ".join(args))
        assert "\x07" not in proc.stdout
    shown = list(csv.reader(io.StringIO(run_cli("hashlist", "show", "\u202eevil", "--state",
                                                 str(tmp_path / "state.db")).stdout)))  # fmt: skip
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in shown for cell in row)


def test_the_text_helpers_escape_what_terminals_and_spreadsheets_act_on():
    from mirror_scan.text import csv_cell, one_line, printable

    assert printable("a\x1b[2Jb\nc\td") == "a\\u001b[2Jb\nc\td"
    assert one_line("a\nb\u202ec") == "a\\u000ab\\u202ec"
    assert printable("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"  # ordinary text untouched
    assert csv_cell("=1+1") == "'=1+1" and csv_cell("-x") == "'-x" and csv_cell("ok=1") == "ok=1"
    assert csv_cell(42) == 42 and csv_cell(None) is None
    assert json.loads(printable(json.dumps({"k": "x\u009by\x7f"}, ensure_ascii=False))) == {"k": "x\u009by\x7f"}


# ----------------------------------------------------------------------------- unscanned


def _png_with_chunk(image, kind: bytes, payload: bytes, after_idat: bool = False) -> bytes:
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    image.save(buf, "PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:-12] + chunk + png[-12:] if after_idat else png[:33] + chunk + png[33:]


def test_oversized_or_malformed_png_metadata_never_stops_the_pixels(tmp_path, tiny_bundle_master, flag_all):
    import zlib

    from PIL import Image, PngImagePlugin

    from mirror_scan.model.synthetic import generated_image

    inflating = zlib.compress(b"A" * (PngImagePlugin.MAX_TEXT_CHUNK * 3))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = {
        # one colour, as logos and placeholders often are: decoded "as far as it goes" it looked like nothing
        "flat-ztxt.png": _png_with_chunk(Image.new("RGB", (64, 48), (200, 30, 30)), b"zTXt",
                                         b"Comment\x00\x00" + inflating),  # fmt: skip
        "iccp.png": _png_with_chunk(generated_image(3, 96, 64), b"iCCP", b"profile\x00\x00" + inflating),
        "itxt-after.png": _png_with_chunk(generated_image(4, 96, 64), b"iTXt",
                                          b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + inflating, after_idat=True),
        "bad-exif.png": _png_with_chunk(generated_image(5, 96, 64), b"eXIf", b"MM\x00*garbage, not a TIFF"),
    }  # fmt: skip
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    proc = _cli(tmp_path, "scan", str(mirror), "--model", str(tiny_bundle_master), "--policy", str(flag_all),
                "--dry-run", "--json")  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 0 and summary["flagged"] == len(files), (summary, proc.stderr)
    records = {Path(r["path"]).name: r for r in map(json.loads, run_cli(
        "report", "--state", str(tmp_path / "state.db")).stdout.splitlines())}  # fmt: skip
    for name in files:
        assert records[name]["status"] == "scored", records[name]
    assert "metadata skipped (zTXt)" in records["flat-ztxt.png"]["reason"]
    assert "metadata skipped (iCCP)" in records["iccp.png"]["reason"]
    # Whole pictures, not partial ones: nothing lands in `report --errors`.
    errors = run_cli("report", "--errors", "--state", str(tmp_path / "state.db")).stdout
    assert errors.strip() == "", errors


def test_duplicate_hashes_in_a_list_are_one_entry(tmp_path):
    import hashlib

    digest = hashlib.sha256(b"picture").hexdigest()
    listed = tmp_path / "dups.csv"
    listed.write_text(f"type,hash,note\npdq,{digest},first\npdq,{digest.upper()},second\npdq, {digest} ,third\n")
    proc = run_cli("hashlist", "import", str(listed), "--name", "dups", "--state", str(tmp_path / "s.db"))
    assert proc.returncode == 0, proc.stderr
    assert "imported hash list 'dups' (flag): 1 pdq (2 duplicate(s) merged)" in proc.stdout
    shown = run_cli("hashlist", "show", "dups", "--state", str(tmp_path / "s.db")).stdout.splitlines()
    assert shown[1:] == [f"pdq,{digest},first,"]
