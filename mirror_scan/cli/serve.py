"""`serve`: the upload validator pict-rs calls before it accepts any upload."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Annotated

import typer

from mirror_scan.cli.console import err, setup_logging
from mirror_scan.cli.options import (
    ConfigOpt,
    DeviceOpt,
    ModelOpt,
    PolicyOpt,
    PrecisionOpt,
    QuarantineOpt,
    SeverityOpt,
    StateOpt,
    new_state,
    parse_listen,
)
from mirror_scan.errors import UsageError
from mirror_scan.settings import resolve


def read_token(path: Path | None) -> str:
    if path is None:
        raise UsageError(
            "serve needs a token file (--token-file FILE)",
            hint='create one: python -c "import secrets; print(secrets.token_urlsafe(32))" > token && chmod 600 token',
        )
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        raise UsageError(f"token file {path} cannot be read: {error.strerror}") from None
    if len(token) < 16 or any(c in token for c in "/?#% \t"):
        raise UsageError(f"token file {path} must hold one URL-safe token of 16+ characters")
    if mode & 0o077:
        err.print(f"warning: token file {path} is readable by others (chmod 600 it)")
    return token


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        listen: Annotated[str, typer.Option("--listen", help="HOST:PORT (loopback by default).")] = "127.0.0.1:14051",
        token_file: Annotated[Path | None, typer.Option("--token-file", help="File holding the URL token.")] = None,
        on_error: Annotated[
            str,
            typer.Option(
                "--on-error", help="Undecodable uploads: reject (default, fails closed like pict-rs) or accept."
            ),
        ] = "reject",
        on_overload: Annotated[
            str,
            typer.Option(
                "--on-overload",
                help="When the validator is saturated or too slow: reject (503, default; pict-rs refuses the "
                "upload) or accept (the upload goes through unchecked and the watch daemon scores it from the "
                "mirror).",
            ),
        ] = "reject",
        answer_within: Annotated[
            float,
            typer.Option(
                "--answer-within",
                help="Seconds an upload may wait for its verdict before --on-overload decides (keep it under "
                "pict-rs's own timeout, 30 s by default).",
            ),
        ] = 20.0,
        max_body_mb: Annotated[int, typer.Option("--max-body-mb", help="Largest upload accepted for checking.")] = 64,
        metrics: Annotated[
            str | None, typer.Option("--metrics", help="Serve Prometheus metrics on HOST:PORT (like watch).")
        ] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="Largest micro-batch.")] = None,
        model: ModelOpt = None,
        policy: PolicyOpt = None,
        severity: SeverityOpt = None,
        state: StateOpt = None,
        quarantine: QuarantineOpt = None,
        device: DeviceOpt = None,
        precision: PrecisionOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Answer pict-rs's external_validation: 200 accepts an upload, 406 rejects it (its bytes are kept in
        the quarantine). Configure pict-rs with
        external_validation = "http://127.0.0.1:14051/validate/<token>" (pict-rs 0.4.3+; its request is
        HTTP/1.1 with a chunked body, which is what this server expects)."""
        setup_logging(events=True)  # a service logs each rejected upload and each event that matters
        from mirror_scan.app.validator import ValidatorOptions, ValidatorService

        if on_error not in ("reject", "accept"):
            raise UsageError(f"--on-error {on_error!r}", hint="use reject or accept")
        if not 0 < answer_within <= 60:
            raise UsageError(f"--answer-within {answer_within}", hint="a number of seconds, above 0 and at most 60")
        if on_overload not in ("reject", "accept"):
            raise UsageError(f"--on-overload {on_overload!r}", hint="use reject or accept")
        host, port = parse_listen(listen)
        token = read_token(token_file)
        settings = resolve(
            {
                "model": model,
                "policy": policy,
                "severity": severity,
                "state": state,
                "quarantine": quarantine,
                "device": device,
                "precision": precision,
                "batch_size": batch_size,
            },
            config,
        )
        if not settings.state.exists():
            new_state(settings)  # a wrong --state is refused, not taken for a first start
        options = ValidatorOptions(
            host=host,
            port=port,
            token=token,
            on_error=on_error,
            on_overload=on_overload,
            answer_within_s=answer_within,
            max_body_bytes=max_body_mb << 20,
            metrics=parse_listen(metrics) if metrics else None,
        )
        stats = ValidatorService(settings, options).run(say=err.print)
        err.print(f"stopped: {stats['accepted']} accepted, {stats['rejected']} rejected")
