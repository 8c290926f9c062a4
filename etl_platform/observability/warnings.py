"""Silence the Dagster warnings the platform triggers knowingly, and only those.

Installed by the entry points (`definitions.py` before it declares assets, `cli.py`'s `main`, the
read API's app factory, the run coordinator and launchers that dagster.yaml plugs in), so the
filters are in place in every process that loads the platform (CLI, code server, run workers,
daemon, webserver).
Filters match the exact message, not a whole warning class: any other beta, preview or
deprecation warning still shows. Plain `warnings` only: importing this must not import Dagster.
"""

from __future__ import annotations

import re
import warnings

# Each entry: (the warning's message, where the platform uses the feature).
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    # BetaWarning: an asset backfills a tenant x date range in one run (BackfillPolicy.single_run())
    ("Parameter `backfill_policy` of function `asset` is currently in beta", "assets/*: @asset(backfill_policy=...)"),
    # PreviewWarning: checks partitioned like the assets they judge (<day>|<tenant>)
    ("Specifying a partitions_def on an AssetCheckSpec is currently in preview", "assets/*: partitioned checks"),
    # BetaWarning raised by Dagster's own selection parser for every `--select`/`--assets` the README documents
    ("Parameter `include_sources` of function `AssetSelection.all` is currently in beta", "dagster/dg CLI selections"),
)


def install() -> None:
    """Add one `ignore` filter per known warning (idempotent: `warnings` drops duplicates)."""
    for message, _where in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))
