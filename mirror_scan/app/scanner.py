"""Loading what a scan needs (bundle, policy, severity, scorer) and the runner's settings: the start of
`scan`, `serve` and `watch`."""

from __future__ import annotations

from mirror_scan.errors import UsageError
from mirror_scan.settings import Settings


def load_model_and_policy(settings: Settings):
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.scoring import require_prompts
    from mirror_scan.policy import load_policy, resolve_severity

    policy = load_policy(settings.policy)
    severity = resolve_severity(policy, settings.severity)
    if not (settings.model / "manifest.json").exists() and not settings.model.exists():
        raise UsageError(
            f"no model bundle at {settings.model} (from {settings.sources['model']})",
            hint="pass --model DIR, or export one: mirror-scan model export --out DIR",
        )
    bundle = load_bundle(settings.model)
    require_prompts(bundle, policy)
    return bundle, policy, severity


def load_scanner(settings: Settings, *, warm_up: bool = False):
    """Bundle, policy, severity offset and a ready scorer. Long-running services warm the session up, so
    the first file or upload pays no session setup."""
    import numpy as np

    from mirror_scan.model.scoring import Scorer

    bundle, policy, offset = load_model_and_policy(settings)
    scorer = Scorer(bundle, device=settings.device, precision=settings.precision)
    if warm_up:
        height, width = bundle.preprocess.size
        scorer(np.zeros((1, 3, height, width), dtype=np.float32))
    return bundle, policy, offset, scorer


def decode_limits(settings: Settings, policy, bundle):
    """What the decode may spend and hands the model: the same for `scan`, `watch` and `serve`."""
    from mirror_scan.scan import anime
    from mirror_scan.scan.decoders import gpujpeg
    from mirror_scan.scan.decoders.decode import Limits

    return Limits(
        max_pixels=settings.max_pixels,
        max_frames=settings.max_frames,
        max_decoded_frames=settings.max_decoded_frames,
        coverage=policy.coverage,
        resize=settings.resize,
        jpeg_decoder=gpujpeg.resolve(settings.jpeg_decoder, settings.decoders),
        deepdanbooru=anime.wanted(policy, bundle),
    )


def scan_config(settings: Settings, severity: float, policy, bundle, **overrides):
    """The runner's settings, the same for `scan` and `watch`."""
    from mirror_scan.scan.runner import ScanConfig

    return ScanConfig(
        severity=severity,
        batch_size=settings.batch_size,
        workers=settings.workers,
        limits=decode_limits(settings, policy, bundle),
        max_bytes=settings.max_file_mb << 20,
        read_timeout_s=settings.read_timeout,
        decoders=settings.decoders,
        decode_timeout_s=settings.decode_timeout,
        **overrides,
    )
