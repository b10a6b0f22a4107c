"""`calibrate`: the false-positive rate on the admin's own benign pictures, per severity, with an interval,
and the severity that meets a target (optionally written to the config file with its provenance)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import err, out, print_json
from mirror_scan.cli.options import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PolicyOpt,
    QuarantineOpt,
    SeverityOpt,
    StateOpt,
    open_writer,
)
from mirror_scan.errors import UsageError
from mirror_scan.settings import config_file, resolve


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)


def calibrate(
    paths: Annotated[
        list[Path], typer.Argument(help="Pictures known to be benign: a backup from before a spam wave, logos.")
    ],
    target_fp: Annotated[
        float, typer.Option("--target-fp", help="The false-positive rate to meet (0.005 = 0.5%).", min=1e-6, max=0.5)
    ] = 0.005,
    write: Annotated[
        bool, typer.Option("--write", help="Store the chosen severity in the config file, with its provenance.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the rates and margins as a picture (FILE.png).")
    ] = None,
    model: ModelOpt = None,
    policy: PolicyOpt = None,
    severity: SeverityOpt = None,
    device: DeviceOpt = None,
    state: StateOpt = None,
    quarantine: QuarantineOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a sample you know to be benign (stored results are reused; nothing is recorded as a file, so
    nothing can be acted on) and print, for each severity offset, how many the policy would flag: the
    false-positive rate with its 95% interval (Wilson), per label, how many pictures sit near the current
    threshold, and the most sensitive severity whose interval stays under --target-fp."""
    from mirror_scan.app.calibration import Calibration
    from mirror_scan.scan.calibrate import calibrate as compute
    from mirror_scan.scan.calibrate import offsets_around

    settings = resolve(
        {"model": model, "policy": policy, "severity": severity, "device": device, "state": state,
         "quarantine": quarantine},
        config,
    )  # fmt: skip
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist", hint="pass folders or files of benign pictures")
    if plot is not None and not plot.parent.is_dir():  # said before the sample is read, not after
        raise UsageError(f"--plot {plot}: the folder {plot.parent} does not exist")
    job = Calibration(settings)
    with open_writer(settings, quiet=json_out) as workspace:
        sample = job.read(workspace, paths)
    for path, why in sample.errors[:20]:
        err.print(f"not in the sample: {path}: {why}")
    if len(sample.errors) > 20:
        err.print(f"... and {len(sample.errors) - 20} more not in the sample")
    if not sample.sims:
        raise UsageError("no picture in the sample could be read", hint="the lines above say why, file by file")
    offsets = offsets_around(job.policy, job.offset)
    result = compute(job.policy, sample.sims, job.offset, target_fp, offsets, sample.deepdanbooru)
    now, chosen = result.at(job.offset), result.chosen
    summary = {
        "pictures": result.pictures,
        "reused": sample.reused,
        "scored": sample.scored,
        "not_readable": len(sample.errors),
        "policy": job.policy.policy_id,
        "model": job.model_id,
        "target_fp": target_fp,
        "current": {
            "offset": now.offset,
            "flagged": now.flagged,
            "rate": now.rate,
            "interval": [now.low, now.high],
            "by_label": now.by_label,
        },  # fmt: skip
        "chosen": None
        if chosen is None
        else {
            "offset": chosen.offset,
            "flagged": chosen.flagged,
            "rate": chosen.rate,
            "interval": [chosen.low, chosen.high],
        },  # fmt: skip
        "near_current_threshold": result.near_current,
        "offsets": [
            {
                "offset": p.offset,
                "flagged": p.flagged,
                "rate": p.rate,
                "interval": [p.low, p.high],
                "by_label": p.by_label,
            }
            for p in result.points
        ],
        "notes": result.notes,
    }
    if write:
        if chosen is None:
            raise UsageError(
                f"no severity in {offsets[0]:+g}..{offsets[-1]:+g} meets {target_fp:.2%}: nothing written",
                hint="raise --target-fp, or look at what is flagged (the margins above) before choosing",
            )
        target = config_file(config)
        provenance = (f"calibrated {dt.date.today().isoformat()}: {result.pictures} benign pictures, model "
                      f"{job.model_id}, policy {job.policy.policy_id}, {chosen.flagged} flagged "
                      f"(95% up to {chosen.high:.3%}, target {target_fp:.2%})")  # fmt: skip
        write_severity(target, chosen.offset, provenance)
        summary["written"] = str(target)
    if plot is not None:
        from mirror_scan.atomic import atomic_write_bytes
        from mirror_scan.scan.calplot import margins_plot, png_bytes

        try:
            atomic_write_bytes(plot, png_bytes(margins_plot(result, offsets)), 0o644)
        except OSError as error:
            raise UsageError(f"--plot {plot} cannot be written: {error.strerror}") from None
        summary["plot"] = str(plot)
    if json_out:
        print_json(summary)
        return
    out.print(f"{result.pictures} benign picture(s) ({sample.reused} reused, {sample.scored} scored), policy "
              f"{job.policy.policy_id}")  # fmt: skip
    print_rates(result, offsets)
    out.print(f"now (severity {now.offset:+g}): {_rate_text(now.flagged, result.pictures, now.high)}")
    out.print(f"{result.near_current} picture(s) change verdict within one step of the current threshold")
    if chosen is None:
        out.print(f"no severity in the range meets {target_fp:.2%}: look at what is flagged before choosing")
    else:
        out.print(f"most sensitive severity meeting {target_fp:.2%}: {chosen.offset:+g} "
                  f"({_rate_text(chosen.flagged, result.pictures, chosen.high)})")  # fmt: skip
    print_margins(result, offsets)
    for note in result.notes:
        out.print(f"note: {note}")
    if plot is not None:
        out.print(f"plot written to {plot}")
    if write:
        out.print(f"severity {chosen.offset:+g} written to {summary['written']} (`mirror-scan rescore` applies it)")


def print_rates(result, offsets) -> None:
    from mirror_scan.scan.calibrate import rate_lines

    for line in rate_lines(result):
        out.print(line)


def print_margins(result, offsets) -> None:
    from mirror_scan.scan.calibrate import margin_lines

    for line in margin_lines(result, offsets):
        out.print(line)


def _rate_text(flagged: int, n: int, high: float) -> str:
    if flagged == 0:
        return f"0 of {n} flagged: the false-positive rate is under {high:.2%} (95%)"
    return f"{flagged} of {n} flagged: {flagged / n:.2%}, at most {high:.2%} (95%)"


SEVERITY_LINE = re.compile(r"^\s*severity\s*=.*$", re.M)


def write_severity(path: Path, offset: float, provenance: str) -> None:
    """Set `severity` in a config file, keeping everything else as it is: the line is replaced where it
    is, or added to [scan] (or at the top when the file has no [scan] table), with the provenance as a
    comment above it. The result must parse and give back the offset, or the file is left unchanged."""
    import tomllib

    from mirror_scan.atomic import atomic_write_bytes

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    line = f'# {provenance}\nseverity = "{offset:+g}"'
    if SEVERITY_LINE.search(text):
        new = SEVERITY_LINE.sub(lambda _: line, text, count=1)
    elif re.search(r"^\[scan\]\s*$", text, re.M):
        new = re.sub(r"^\[scan\]\s*$", lambda m: m.group(0) + "\n" + line, text, count=1, flags=re.M)
    else:
        new = line + "\n" + text
    try:
        data = tomllib.loads(new)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path} would not parse after the change ({error}); nothing written") from None
    if float(dict(data.get("scan", data)).get("severity", "nan")) != float(f"{offset:+g}"):
        raise UsageError(f"{path}: the severity could not be set where it is read; nothing written",
                         hint="set severity by hand in its [scan] table")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, new.encode(), 0o600)
