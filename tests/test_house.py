"""The house: one decision path, and floors that only import downwards.

- The scan, the validator (its cached and its fresh path) and rescore give the same verdicts and the
  same reasons for the same bytes, including a hash-list match found through a rotated copy's hash.
- An old database's "upstream pending" spelling is migrated to the one the quarantine uses.
- No module imports from a floor above its own (see docs/architecture.md, "Floors").
"""

from __future__ import annotations

import ast
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

import mirror_scan
from mirror_scan.hashing import sha256_bytes
from mirror_scan.lists.hashes import pdq
from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.scoring import Scorer
from mirror_scan.model.synthetic import generated_image
from mirror_scan.policy import load_policy
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.record import picture_of
from mirror_scan.scan.rescore import rescore
from mirror_scan.scan.runner import Scan, ScanConfig
from mirror_scan.scan.uploads import Batcher, Job, ServeConfig
from mirror_scan.store.ledger import Ledger
from mirror_scan.store.quarantine import Quarantine


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _verdicts(ledger: Ledger) -> dict[str, tuple[str, dict]]:
    rows = ledger.db.execute("SELECT sha256, verdict, reason FROM files").fetchall()
    return {sha: (verdict, json.loads(reason) if reason else None) for sha, verdict, reason in rows}


def _scan(state: Path, mirror: Path, bundle, scorer, policy, listed: list) -> Ledger:
    ledger = Ledger(state)
    if listed:
        ledger.lists.import_hash_list("rotated", "flag", "test", listed)
    Scan(ledger, bundle, scorer, policy, ScanConfig(decoders="thread", workers=1), actor=None).run([str(mirror)])
    return ledger


def _serve(ledger: Ledger, tmp: Path, bundle, scorer, policy, pictures: dict[str, bytes]) -> dict:
    batcher = Batcher(ledger, Quarantine(tmp / "q", ledger), bundle, scorer, policy, ServeConfig(token="t"))
    answers = {}
    for data in pictures.values():
        decoded = decode(data, bundle.preprocess, Limits(coverage=policy.coverage))
        job = Job(picture_of(sha256_bytes(data), data, decoded), data, "image/png", decoded.pixels)
        batcher._decide([job])  # the batcher thread's own step, in this thread
        flagged, reason = job.future.result(timeout=5)
        reason = dict(reason or {})
        reason.pop("quarantine_item", None)  # where the validator kept the rejected bytes
        answers[job.picture.sha256] = ("flagged" if flagged else "clean", reason or None)
    return answers


def test_scan_serve_and_rescore_decide_alike(tmp_path, tiny_bundle_master, write_policy, flag_all):
    bundle = load_bundle(tiny_bundle_master)
    scorer = Scorer(bundle, device="cpu")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    images = {f"p{seed}.png": generated_image(seed, 160 + 16 * seed, 120) for seed in range(8)}
    pictures = {name: _png(img) for name, img in images.items()}
    for name, data in pictures.items():
        (mirror / name).write_bytes(data)
    # A flag list holding the hash of p3 turned a quarter: only the rotations of the scan find it.
    rotated = images["p3.png"].transpose(Image.Transpose.ROTATE_90)
    listed = [("pdq", pdq(rotated)[0], "", "test")]

    # First pass: every picture scored and stored (a policy that flags everything).
    first = _scan(tmp_path / "a.db", mirror, bundle, scorer, load_policy(flag_all), listed)
    sims = [
        first.results.get_result(rid).sims.max(axis=0) for (rid,) in first.db.execute("SELECT result_id FROM files")
    ]
    prompt = bundle.concepts.prompts.index("cartoon")
    threshold = float(np.median([row[prompt] for row in sims]))
    middle = load_policy(write_policy({"any": {"cartoon": threshold}}, {"any": 1}, name="middle"))

    # The same bytes decided four ways under the second policy.
    scanned = _verdicts(_scan(tmp_path / "b.db", mirror, bundle, scorer, middle, listed))
    fresh_ledger = Ledger(tmp_path / "c.db")
    fresh_ledger.lists.import_hash_list("rotated", "flag", "test", listed)
    fresh = _serve(fresh_ledger, tmp_path / "c", bundle, scorer, middle, pictures)  # the list known from the start
    cached = _serve(first, tmp_path / "a", bundle, scorer, middle, pictures)  # stored results, no inference
    rescore(first, middle, 0.0, bundle)
    rescored = _verdicts(first)

    assert {v for v, _ in scanned.values()} == {"flagged", "clean"}, scanned  # the policy splits them
    p3 = sha256_bytes(pictures["p3.png"])
    assert scanned[p3][0] == "flagged" and scanned[p3][1]["hash_list"] == "rotated", scanned[p3]
    assert any("frames_flagged" in (r or {}) for _, r in scanned.values())
    assert rescored == scanned
    assert cached == scanned
    assert fresh == scanned


def test_an_old_spelling_of_upstream_pending_is_migrated(tmp_path):
    path = tmp_path / "state.db"
    ledger = Ledger(path)
    ledger.record_file(b"/m/a", size=1, mtime_ns=1, sha256="a" * 64, status="scored", verdict="flagged")
    ledger.commit()
    ledger.close()
    db = sqlite3.connect(path)  # as schema 5 left it
    db.execute("UPDATE files SET action='upstream pending'")
    db.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert ledger.file_row(b"/m/a").action == "upstream_pending"
    ledger.close()


# ----------------------------------------------------------------------------- floors

PACKAGE = Path(mirror_scan.__file__).parent

# Lowest floor first: the folders of the package (docs/architecture.md, "Floors"). A module may import
# from its own floor and any floor below, never above.
FLOORS = [
    {"errors", "kinds", "text", "faults", "redact", "hashing", "atomic", "settings", "logs"},
    {"policy"},
    {"model"},
    {"lists"},
    {"clients", "bucket.s3"},
    {"store"},
    {"moderation"},
    {"scan.decoders"},
    {"scan"},
    {"intake"},
    {"bucket"},
    {"app", "policies"},
    {"review"},
    {"cli"},
]


def _floor_of(module: str) -> int:
    """The floor named for the module itself (bucket.s3), else for the nearest folder named (scan.decoders,
    then scan)."""
    parts = module.split(".")
    for name in (".".join(parts[:n]) for n in range(len(parts), 0, -1)):
        for index, names in enumerate(FLOORS):
            if name in names:
                return index
    raise AssertionError(f"mirror_scan.{module} has no floor: add it to FLOORS (and to docs/architecture.md)")


def _module_or_package(base: list[str], name: str) -> str:
    """`from . import X`: X's module when it is one, else the package it is taken from (the root is
    floor 0: `__version__`)."""
    where = PACKAGE.joinpath(*base, name)
    if where.with_suffix(".py").exists() or where.is_dir():
        return ".".join([*base, name])
    return ".".join(base) or "errors"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module relative to the package) for every import of the package, lazy ones too."""
    here = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level])
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [target] if node.module else [_module_or_package(base, a.name) for a in node.names]
            elif node.module and node.module.startswith("mirror_scan."):
                names = [node.module.removeprefix("mirror_scan.")]
            else:
                continue
            found += [(node.lineno, name) for name in names if name]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("mirror_scan.")) for a in node.names
                      if a.name.startswith("mirror_scan.")]  # fmt: skip
    return found


def test_no_module_imports_from_a_floor_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.endswith("__init__") or module.endswith("__main__"):
            continue
        mine = _floor_of(module)
        for line, target in _imports(path):
            if target and _floor_of(target) > mine:
                upward.append(f"mirror_scan/{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def test_every_command_explains_itself():
    """Every command's --help renders (options declared once in cli/options.py, none broken by a move)."""
    import typer
    from typer.testing import CliRunner

    from mirror_scan.cli.main import app

    runner, paths = CliRunner(), []

    def walk(command, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            paths.append(path)

    walk(typer.main.get_command(app), [])
    assert len(paths) > 40, paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (path, result.output[-500:])


# ----------------------------------------------------------------------------- the item's one owner

# The ledger's writers of an item's state and of `files.action` (store/ledger.py): store/lifecycle.py
# calls them, nothing else does (docs/architecture.md, "The life of a quarantine item").
STATE_SETTERS = {"set_item_state", "mark_action", "mark_action_by_sha", "insert_item", "delete_item"}


def test_only_the_lifecycle_changes_an_items_state():
    owner = PACKAGE / "store" / "lifecycle.py"
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in STATE_SETTERS:
                callers.append(f"mirror_scan/{path.relative_to(PACKAGE)}:{node.lineno} uses {node.attr}")
    assert not callers, "an item's state changes outside store/lifecycle.py:\n" + "\n".join(callers)


def test_the_store_composes_objects_instead_of_mixins():
    """A class of the store has one base at most: its parts are objects that call each other's public
    methods (the quarantine is a facade over them), never one namespace assembled from several files."""
    mixed, private = [], []
    for path in sorted((PACKAGE / "store").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and len(node.bases) > 1:
                mixed.append(f"store/{path.name}:{node.lineno} class {node.name}")
            # `other._method`: only an object's own methods reach its private parts.
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):  # fmt: skip
                private.append(f"store/{path.name}:{node.lineno} reaches {ast.unparse(node)}")
    for path in sorted(PACKAGE.rglob("*.py")):  # and no module reaches into another's private helpers
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mirror_scan"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {alias.name}")
    assert not mixed, "classes of the store assembled from several bases:\n" + "\n".join(mixed)
    assert not private, "private helpers imported from another module:\n" + "\n".join(private)


def test_the_documented_state_machine_is_the_table():
    """docs/architecture.md shows the transition table as store/lifecycle.py generates it."""
    from mirror_scan.store.lifecycle import diagram

    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert diagram() in doc, "docs/architecture.md's item table is stale: python -m mirror_scan.store.lifecycle"


def test_every_transition_leads_somewhere_known_and_every_state_is_reachable():
    from mirror_scan.kinds import ItemState
    from mirror_scan.store.lifecycle import REINDEXED_AS, TRANSITIONS

    reached = {t.to for t in TRANSITIONS.values()} | set(REINDEXED_AS.values())
    assert set(ItemState) <= reached, set(ItemState) - reached
    for (state, event), transition in TRANSITIONS.items():
        # A state that moves bytes ends only by its move's own events, never by a person's decision.
        if state in (ItemState.QUARANTINING, ItemState.RESTORING):
            assert transition.decision is None or event.name.startswith("RESTORED"), (state, event)


def _runtime_imports(path: Path) -> list[str]:
    """The package's modules a module imports (`from mirror_scan.lists import hashes` is lists.hashes), lazy
    imports included, type-only ones (under TYPE_CHECKING) not."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    here = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join([*here[: len(here) - node.level], *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("mirror_scan"):
                base = node.module.removeprefix("mirror_scan").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.append(sub if PACKAGE.joinpath(*sub.split(".")).with_suffix(".py").exists() else base)
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("mirror_scan.") for a in node.names if a.name.startswith("mirror_scan.")]
    return found


def test_no_two_modules_import_each_other():
    """An import cycle (lazy imports count: the cycle is there, only hidden) is a module split in the wrong
    place: lists/hashes and lists/canary were one (issue 38); the ledger's matcher is lists/live.py now."""
    modules = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target in _runtime_imports(path):
            if target in modules and target != name:
                graph[name].add(target)
    seen, cycles = set(), []

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in seen:
                walk(nxt, [*trail, nxt])
        seen.add(node)

    for start in sorted(graph):
        if start not in seen:
            walk(start, [start])
    assert not cycles, "modules that import each other:\n" + "\n".join(sorted(set(cycles)))
