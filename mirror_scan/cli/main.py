"""The `mirror-scan` command line: registers the command groups (cli/*.py), each of which parses flags,
calls the application layer (app/) or the library, and prints. Long work lives in app/, not here."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mirror_scan import __version__
from mirror_scan.cli import bucket as cli_bucket
from mirror_scan.cli import calibrate as cli_calibrate
from mirror_scan.cli import canary as cli_canary
from mirror_scan.cli import lemmy as cli_lemmy
from mirror_scan.cli import mirror as cli_mirror
from mirror_scan.cli import quarantine as cli_quarantine
from mirror_scan.cli import review as cli_review
from mirror_scan.cli import scan as cli_scan
from mirror_scan.cli import serve as cli_serve
from mirror_scan.cli import state as cli_state
from mirror_scan.cli import watch as cli_watch
from mirror_scan.cli.console import Io, err, out, print_error, print_json, setup_logging, using
from mirror_scan.cli.hashlist import hashlist_app
from mirror_scan.cli.options import BundleDirOpt, DeviceOpt, JsonOpt, PolicyOpt, SeverityOpt
from mirror_scan.errors import MirrorScanError

app = typer.Typer(
    name="mirror-scan",
    help="Scan a mirrored pict-rs bucket with a CLIP model and a data-driven policy; quarantine what it "
    "flags (never lose a file), restore false positives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
model_app = typer.Typer(help="Export, inspect and verify model bundles.", no_args_is_help=True)
policy_app = typer.Typer(help="List, show and test decision policies.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(policy_app, name="policy")
cli_scan.register(app)
cli_quarantine.register(app)
cli_mirror.register(app)
cli_serve.register(app)
cli_watch.register(app)
cli_state.register(app)
cli_lemmy.register(app)
cli_bucket.register(app)
cli_calibrate.register(app)
cli_canary.register(app)
cli_review.register(app)
app.add_typer(hashlist_app, name="hashlist")


def _version(value: bool) -> None:
    if value:
        out.print(f"mirror-scan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log detail (-vv for debug).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="MIRROR_SCAN_LOG_FORMAT",
            help="auto (rich at a terminal, plain lines otherwise), text (plain lines, one per event, the syslog "
            "priority first under journald) or json (one object per line).",
        ),
    ] = "auto",
) -> None:
    setup_logging(verbose, fmt=log_format)


# ------------------------------------------------------------------------------------------- model


@model_app.command("export")
def model_export(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create.")],
    arch: Annotated[
        str, typer.Option(help="open_clip architecture; tiny-test is a random model for tests.")
    ] = "ViT-L-14",
    pretrained: Annotated[
        str, typer.Option(help="open_clip pretrained tag or checkpoint path; 'none' for random weights.")
    ] = "openai",
    quantize: Annotated[str | None, typer.Option(help="Also write an int8 image encoder for CPU: int8.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Also write an fp16 image encoder for CUDA.")] = True,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="Embed this policy's prompts too (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle directory.")] = False,
    with_deepdanbooru: Annotated[
        bool,
        typer.Option(
            "--with-deepdanbooru",
            help="Also export DeepDanbooru (horde-safety's anime model, fedi-safety's default): its release "
            "checkpoint is downloaded and checked by sha256 (or give --deepdanbooru-weights); random weights with "
            "--pretrained none.",
        ),
    ] = False,
    deepdanbooru_weights: Annotated[
        Path | None,
        typer.Option(
            "--deepdanbooru-weights",
            help="Local model-resnet_custom_v3.pt (checked against its sha256; implies --with-deepdanbooru).",
        ),
    ] = None,
    deepdanbooru_width_divisor: Annotated[
        int, typer.Option(hidden=True, help="Tests only: narrow a random-weight DeepDanbooru by this factor.")
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Export an open_clip CLIP model to a bundle (needs the [export] extra: torch, open_clip)."""
    if quantize not in (None, "int8"):
        raise MirrorScanError(f"--quantize {quantize!r} is not supported", hint="use --quantize int8")
    try:
        from mirror_scan_export import ExportOptions, export_bundle
    except ImportError:
        raise MirrorScanError(
            "the export code (mirror_scan_export) is not installed",
            hint="install mirror-scan from its source tree with the [export] extra",
        ) from None
    with err.status(f"exporting {arch}/{pretrained} to {out_dir} ..."):
        manifest = export_bundle(
            ExportOptions(
                arch=arch,
                pretrained=pretrained,
                out=out_dir,
                quantize=quantize,
                fp16=fp16,
                policies=policy or [],
                force=force,
                deepdanbooru=with_deepdanbooru,
                deepdanbooru_weights=deepdanbooru_weights,
                deepdanbooru_width_divisor=deepdanbooru_width_divisor,
            )
        )
    if json_out:
        print_json(manifest)
        return
    parity = manifest["parity"]
    out.print(
        f"wrote {out_dir}: {arch}/{pretrained}, embedding {manifest['model']['embedding_dim']}, "
        f"{manifest['concept_count']} concept prompts"
    )
    out.print(
        f"parity ONNX vs torch: image min cosine {parity['image']['min_cosine']:.6f}, "
        f"text min cosine {parity['text']['min_cosine']:.6f}"
    )
    for variant in ("fp16_vs_fp32", "int8_vs_fp32"):
        if variant in parity and parity[variant].get("checked"):
            out.print(f"{variant.replace('_vs_', ' vs ')}: min cosine {parity[variant]['min_cosine']:.6f}")
    if "deepdanbooru" in manifest:
        out.print(f"DeepDanbooru: {_dd_summary(manifest['deepdanbooru'])}")


def _dd_summary(dd) -> str:
    """One line on the bundle's DeepDanbooru entry (read as found: `model info` shows broken bundles too)."""
    if not isinstance(dd, dict):
        return "entry is malformed"
    weights = dd.get("weights") if isinstance(dd.get("weights"), dict) else {}
    text = f"{dd.get('tag_count', '?')} tags, " + (
        "random weights" if dd.get("random_weights") else f"weights sha256 {str(weights.get('sha256'))[:12]}"
    )
    if dd.get("width_divisor", 1) != 1:
        text += f", narrowed 1/{dd.get('width_divisor')} (test only)"
    parity = dd.get("parity") if isinstance(dd.get("parity"), dict) else {}
    if parity.get("checked"):
        text += f", ONNX vs torch max diff {parity.get('max_abs_diff', float('nan')):.2e}"
    return text


def _placement_or_reason(bundle, device: str):
    from mirror_scan.model.infer import ImageEncoder

    try:
        return ImageEncoder(bundle, device=device).placement, None
    except MirrorScanError as error:
        return None, str(error)


@model_app.command("info")
def model_info(
    model_dir: Annotated[Path, typer.Argument(help="Bundle directory.")],
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Show a bundle's manifest, its file checks and the provider that would run it."""
    from mirror_scan.model.bundle import check_files, load_bundle, read_manifest

    manifest = read_manifest(model_dir)
    checks = check_files(model_dir, manifest)
    from mirror_scan.model.cpu import cpu_info
    from mirror_scan.model.int8check import cached_check

    placement, reason, int8 = None, None, None
    if all(state == "ok" for _, state in checks):
        bundle = load_bundle(model_dir, verify=False)
        placement, reason = _placement_or_reason(bundle, device)
        int8 = cached_check(bundle)
    else:
        reason = "bundle files do not verify (see checks)"
    cpu = cpu_info()
    int8_text = (
        int8.describe()
        if int8
        else "not checked on this CPU yet (checked on first use of --precision int8, or by `model verify`)"
    )
    if json_out:
        print_json(
            {
                "path": str(model_dir),
                "manifest": manifest,
                "checks": dict(checks),
                "provider": placement.provider if placement else None,
                "precision": placement.precision if placement else None,
                "provider_note": placement.note if placement else reason,
                **cpu.as_dict(),
                "int8_on_this_cpu": None if int8 is None else {"faithful": int8.faithful, "description": int8_text},
            }
        )
        return
    model = manifest["model"]
    prep = manifest["preprocess"]
    table = Table(title=f"model bundle {model_dir}", show_header=False)
    table.add_row(
        "architecture",
        f"{model['arch']} / {model['pretrained']}" + (" (random weights)" if model.get("random_weights") else ""),
    )
    table.add_row("embedding size", str(model["embedding_dim"]))
    table.add_row(
        "input",
        f"{prep['image_size'][0]}x{prep['image_size'][1]}, resize {prep['resize_mode']} "
        f"{prep['interpolation']}, centre crop, mean {prep['mean']}, std {prep['std']}",
    )
    table.add_row(
        "precisions", ", ".join(r.removeprefix("image_") for r in manifest["files"] if r.startswith("image_"))
    )
    table.add_row("concept prompts", str(manifest.get("concept_count", "?")))
    table.add_row("DeepDanbooru", _dd_summary(manifest["deepdanbooru"]) if "deepdanbooru" in manifest else "no")
    parity = manifest.get("parity", {})
    if "image" in parity:
        table.add_row(
            "parity (ONNX vs torch)",
            f"image min cosine {parity['image']['min_cosine']:.6f}, max diff {parity['image']['max_abs_diff']:.2e}",
        )
    for variant in ("fp16_vs_fp32", "int8_vs_fp32"):
        if parity.get(variant, {}).get("checked"):
            table.add_row(variant.replace("_vs_", " vs "), f"min cosine {parity[variant]['min_cosine']:.6f}")
    table.add_row("made with", ", ".join(f"{k} {v}" for k, v in manifest.get("tools", {}).items()))
    table.add_row("this CPU", f"{cpu.model}: {', '.join(cpu.features) or 'no listed features'} ({cpu.int8_class})")
    if "image_int8" in manifest["files"]:
        table.add_row("int8 on this CPU", int8_text)
    if placement:
        table.add_row("would run on", f"{placement.provider} ({placement.precision}): {placement.note}")
    else:
        table.add_row("would run on", f"cannot run: {reason}")
    out.print(table)
    files = Table("file", "check")
    for name, state in checks:
        files.add_row(name, state if state == "ok" else f"FAILED: {state}")
    out.print(files)
    if any(state != "ok" for _, state in checks):
        raise typer.Exit(2)


@model_app.command("verify")
def model_verify(
    model_dir: Annotated[Path, typer.Argument(help="Bundle directory.")],
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Check every file's sha256, build the session, and embed one generated image. Exit 0 when sound."""
    import numpy as np

    from mirror_scan.model.bundle import bundle_hashes, load_bundle
    from mirror_scan.model.cpu import cpu_info
    from mirror_scan.model.infer import ImageEncoder
    from mirror_scan.model.preprocess import to_model_input
    from mirror_scan.model.synthetic import generated_image

    bundle = load_bundle(model_dir)
    cpu = cpu_info()
    say = (lambda text: None) if json_out else out.print
    say(f"this CPU: {cpu.model}: {', '.join(cpu.features) or 'no listed features'} ({cpu.int8_class})")
    probe = np.stack([to_model_input(generated_image(seed), bundle.preprocess) for seed in range(4)])
    reference, results = None, []
    for precision in bundle.available_precisions():
        try:
            encoder = ImageEncoder(bundle, device="cpu" if precision == "int8" else device, precision=precision)
        except MirrorScanError as error:
            results.append({"precision": precision, "status": "skipped", "note": str(error)})
            say(f"{precision}: skipped ({error})")
            continue
        if encoder.placement.precision != precision:
            results.append({"precision": precision, "status": "skipped", "note": encoder.placement.note})
            say(f"{precision}: skipped ({encoder.placement.note})")
            continue
        emb = encoder(probe)
        if emb.shape != (len(probe), bundle.embedding_dim) or not np.isfinite(emb).all():
            raise MirrorScanError(
                f"{precision} image encoder returned {emb.shape}, expected (4, {bundle.embedding_dim})"
            )
        result = {"precision": precision, "status": "ok", "provider": encoder.placement.provider}
        line = f"{precision}: ok on {encoder.placement.provider}"
        if reference is None:
            reference = emb
        else:
            result["min_cosine_vs_fp32"] = round(float((emb * reference).sum(axis=1).min()), 6)
            line += f", min cosine vs fp32 over the {len(probe)} probe images {result['min_cosine_vs_fp32']:.6f}"
        say(line)
        if encoder.int8_check is not None:
            result["int8_check"] = encoder.int8_check.describe()
            say(f"  {encoder.int8_check.describe()}")
        results.append(result)
    dd = None if bundle.deepdanbooru is None else _verify_deepdanbooru(bundle, device, say)
    files = len(bundle_hashes(bundle.manifest))
    if json_out:
        summary = {"bundle": str(model_dir), "files_verified": files, "cpu": cpu.model, "precisions": results}
        print_json({**summary, "deepdanbooru": dd})
        return
    out.print(f"bundle {model_dir}: all {files} files verified")


def _verify_deepdanbooru(bundle, device: str, say) -> dict:
    """Run the bundle's DeepDanbooru on two generated pictures of different resize targets."""
    import math

    from mirror_scan.model.deepdanbooru import RATING_TAGS, DeepDanbooru
    from mirror_scan.model.synthetic import generated_image

    dd = DeepDanbooru(bundle, device=device)
    scores = dd.tag_scores([generated_image(0, 320, 240), generated_image(1, 600, 900)])
    for row in scores:
        if any(tag not in row for tag in RATING_TAGS if tag in dd.tags) or not all(map(math.isfinite, row.values())):
            raise MirrorScanError(f"DeepDanbooru returned unusable scores: {row}")
    say(f"deepdanbooru: ok on {dd.placement.provider} ({len(dd.tags)} tags)")
    return {"status": "ok", "provider": dd.placement.provider, "tags": len(dd.tags)}


@model_app.command("concepts")
def model_concepts(
    model_dir: BundleDirOpt,
    policy: Annotated[list[str], typer.Option("--policy", "-p", help="Policy whose prompts to embed (repeatable).")],
) -> None:
    """Embed a policy's prompts with the bundle's own text encoder (no torch needed)."""
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.concepts import add_prompts
    from mirror_scan.model.infer import TextEncoder
    from mirror_scan.policy import load_policy

    bundle = load_bundle(model_dir)
    prompts = [p for spec in policy for p in load_policy(spec).prompts]
    encoder = TextEncoder(bundle)
    bundle, added = add_prompts(bundle, prompts, encoder)
    out.print(f"{len(added)} new prompt(s) embedded; the bundle now holds {len(bundle.concepts.prompts)}")


# ------------------------------------------------------------------------------------------ policy


@policy_app.command("list")
def policy_list(json_out: JsonOpt = False) -> None:
    """List the built-in policies."""
    from mirror_scan.policy import DEFAULT_POLICY, builtin_policies, load_policy

    listed = []
    for name in builtin_policies():
        policy = load_policy(name)
        listed.append({"name": name, "default": name == DEFAULT_POLICY, "policy_id": policy.policy_id,
                       "rule": policy.rule, "prompts": len(policy.prompts), "made_for": policy.made_for})  # fmt: skip
    if json_out:
        print_json(listed)
        return
    for p in listed:
        mark = " (default)" if p["default"] else ""
        out.print(f"{p['name']}{mark}: rule {p['rule']}, {p['prompts']} prompts, made for {p['made_for']}")


@policy_app.command("show")
def policy_show(
    policy: Annotated[str, typer.Argument(help="Built-in policy name or policy file.")] = "horde-v2",
    json_out: JsonOpt = False,
) -> None:
    """Print a policy: its rule, groups, thresholds, parameters and severity levels."""
    from mirror_scan.policy import load_policy

    loaded = load_policy(policy)
    if json_out:
        print_json(loaded.raw)
        return
    out.print(f"{loaded.name} ({loaded.policy_id}) rule={loaded.rule} flag_on={list(loaded.flag_on)}")
    if loaded.description:
        out.print(loaded.description)
    out.print(
        f"made for: {loaded.made_for or 'any model'}; similarities rounded to "
        f"{loaded.round_decimals if loaded.round_decimals is not None else 'no'} decimals"
    )
    out.print("severity levels: " + ", ".join(f"{k} {v:+g}" for k, v in loaded.severity_levels.items()))
    table = Table("group", "prompts", "fields (min..max)")
    for group, entries in loaded.groups.items():
        fields = []
        for key in entries[0].values if entries else {}:
            nums = [e.values[key] for e in entries if e.values.get(key) is not None]
            if nums:
                fields.append(f"{key} {min(nums):.4g}..{max(nums):.4g}")
        table.add_row(group, str(len(entries)), "; ".join(fields))
    out.print(table)
    for key, value in loaded.parameters.items():
        text = repr(value)
        out.print(f"  {key} = {text if len(text) < 100 else text[:97] + '...'}")
    dd = loaded.deepdanbooru
    if dd is not None:
        state = "on anime pictures" if dd.enabled else "disabled"
        out.print(
            f"DeepDanbooru step ({state}): NSFW when explicit > {dd.explicit_above:g}, questionable > "
            f"{dd.questionable_above:g} with safe < {dd.questionable_needs_safe_below:g}, safe < {dd.safe_below:g}"
            f", or a tag above its threshold {dd.nsfw_tags}; not anime with {list(dd.not_anime_tags)}"
        )


@policy_app.command("test")
def policy_test(
    vectors: Annotated[Path, typer.Argument(help="Labelled similarity vectors (horde-policy vectors.json format).")],
    policy: PolicyOpt = None,
    severity: SeverityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a policy on labelled similarity vectors; print agreement and every disagreement.
    Exit 0 only when every applicable vector agrees."""
    from mirror_scan.policy import load_policy, resolve_severity
    from mirror_scan.policy.vectors import load_vectors, run_vectors

    loaded = load_policy(policy)
    results = run_vectors(loaded, load_vectors(vectors), resolve_severity(loaded, severity))
    applicable = [r for r in results if r.status != "n/a"]
    passed = [r for r in applicable if r.status == "pass"]
    if json_out:
        print_json(
            {
                "policy": loaded.policy_id,
                "applicable": len(applicable),
                "passed": len(passed),
                "not_applicable": len(results) - len(applicable),
                "results": [r.__dict__ for r in results],
            }
        )
    else:
        for r in results:
            if r.status == "fail":
                out.print(f"DISAGREE {r.name}")
                for diff in r.differences:
                    out.print(f"    {diff}")
            elif r.status == "n/a":
                out.print(f"n/a {r.name}: {r.reason}")
        share = 100.0 * len(passed) / len(applicable) if applicable else 0.0
        out.print(
            f"{loaded.name}: {len(passed)}/{len(applicable)} applicable vectors agree ({share:.1f}%), "
            f"{len(results) - len(applicable)} not applicable"
        )
    if not applicable or len(passed) != len(applicable):
        raise typer.Exit(1)


def run(argv: list[str], io: Io | None = None) -> int:
    """Run one command line with these streams (the process's own by default); returns its exit code. A
    failure the tool expects is one error line (and a hint), never a traceback."""
    usage_errors, aborts = _click_failures()
    io = io or Io.process()
    with using(io):
        try:
            code = app(args=list(argv), prog_name="mirror-scan", standalone_mode=False)
            return code if isinstance(code, int) else 0
        except usage_errors as error:  # a usage error, said as click says it (exit 2)
            error.show(file=io.stderr)
            return error.exit_code
        except aborts:  # no answer to a question (end of input), or ^C at one
            io.stderr.write("Aborted!\n")
            return 1
        except MirrorScanError as error:
            print_error(str(error))
            return error.exit_code
        except KeyboardInterrupt:
            io.err.print("interrupted")
            return 130
        except sqlite3.DatabaseError as error:  # damage found after the database opened (a page read later)
            from mirror_scan.store.ledger import StateBusy, is_busy

            if is_busy(error):  # a lock wait that ran out mid-command: the database is fine
                busy = StateBusy("the state database")
                print_error(str(busy))
                return busy.exit_code
            print_error(
                f"the state database cannot be read ({error}); nothing more was changed\n"
                "  -> check it with `mirror-scan state check`; `mirror-scan state rebuild` starts afresh from the "
                "quarantine's metadata"
            )
            return 2


def _click_failures() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The usage-error and abort classes the command line may raise: click's own, and those of the copy of
    click that typer 0.20+ carries inside it (not subclasses of click's). typer 0.29 no longer brings click
    itself: a production install has only typer's copy (the container image showed it)."""
    usage: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = []
    try:
        import click

        usage.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        usage.append(TyperClickException)
    except ImportError:
        pass
    try:
        from typer.exceptions import Abort as TyperAbort

        aborts.append(TyperAbort)
    except ImportError:
        pass
    return tuple(usage), tuple(aborts)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
