"""Export an open_clip CLIP model to a mirror-scan bundle (needs the [export] extra: torch, open_clip)."""

from .export import ExportOptions, export_bundle

__all__ = ["ExportOptions", "export_bundle"]
