"""Secrets out of dlt's pipeline trace.

Text redaction itself lives in `etl_platform.security.redaction` (every layer uses it). Here:
`install_trace_redaction()`, which makes every dlt pipeline of this process write its trace
(`<pipelines_dir>/<pipeline>/trace.pickle`, `pipeline.last_trace`) with exception messages and
resolved configuration values redacted.
What else dlt keeps in a pipeline folder holds no secret: `state.json` (incremental cursors,
schema hashes), `schemas/` (column names and hints), load packages (the rows, already
redacted by the sources) and the `_dlt_*` tables derived from them.
"""

from __future__ import annotations

import threading
from typing import Any

from dlt.pipeline import trace

from etl_platform.security import redaction

_INSTALLED = threading.Event()


class _TraceRedaction:
    """A dlt tracking module: redacts each finished step of a trace before dlt saves it."""

    @staticmethod
    def on_start_trace(trace: Any, step: Any, pipeline: Any) -> None:
        return None

    @staticmethod
    def on_start_trace_step(trace: Any, step: Any, pipeline: Any) -> None:
        return None

    @staticmethod
    def on_end_trace_step(trace: Any, step: Any, pipeline: Any, step_info: Any, send_state: bool) -> None:
        for i, item in enumerate(trace.steps):
            if item.step_exception or item.exception_traces:
                trace.steps[i] = item._replace(
                    step_exception=redaction.redact(item.step_exception),
                    exception_traces=redaction.redact_value(item.exception_traces, urls=True),
                )
        trace.resolved_config_values[:] = [
            v._replace(value=redaction.redact_value(v.value, urls=True)) for v in trace.resolved_config_values
        ]

    @staticmethod
    def on_end_trace(trace: Any, pipeline: Any, send_state: bool) -> None:
        return None


def install_trace_redaction() -> None:
    """Register `_TraceRedaction` first among dlt's tracking modules (once per process), so
    no trace dlt saves or sends holds a secret."""
    if _INSTALLED.is_set():
        return
    if _TraceRedaction not in trace.TRACKING_MODULES:
        trace.TRACKING_MODULES.insert(0, _TraceRedaction)
    _INSTALLED.set()
