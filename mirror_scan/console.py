"""Output plumbing: results to stdout, logs and progress to stderr (so `--json` output stays clean)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

out = Console(soft_wrap=True, highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = (
        logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False)],
        force=True,
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
