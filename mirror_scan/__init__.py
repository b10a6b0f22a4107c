"""mirror-scan: scan a mirrored pict-rs bucket with a CLIP policy, quarantine, restore."""

__version__ = "0.1.0"
