"""The jobs' `console` logger (Definitions(loggers=...)): Dagster's coloured console logger, or
with ETL_LOG_FORMAT=json one JSON line per event on stderr (run id, job, step, tenant,
partition: logs.JsonFormatter), so that no run line is printed twice, as JSON and as text.
The platform's jobs name it in their default run config (RUN_CONFIG); runs of Dagster's implicit
asset job (`__ASSET_JOB`: the UI's Materialize, backfills of an asset selection) name no logger and
get Dagster's default console logger, whose lines logs.JsonConsoleLogger turns into the same JSON."""

from __future__ import annotations

import logging

from dagster import Field, InitLoggerContext, colored_console_logger, logger

from etl_platform.config.settings import log_format
from etl_platform.observability.logs import json_handler

# every platform job's default run config: it names the `console` logger, so that Dagster uses
# this one (for a run whose config names no logger, Dagster adds its own coloured console logger,
# which would print each run line as text beside the JSON one); DEBUG as Dagster's default
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}


@logger(
    Field(
        {
            "log_level": Field(str, is_required=False, default_value="INFO", description="The logger's threshold."),
            "name": Field(str, is_required=False, default_value="dagster", description="The logger's name."),
        },
    ),
    description="Dagster's coloured console logger; JSON lines with ETL_LOG_FORMAT=json.",
)
def console_logger(init_context: InitLoggerContext) -> logging.Logger:
    if log_format() != "json":
        return colored_console_logger.logger_fn(init_context)
    config = init_context.logger_config
    # a logger of its own (not registered by name): its only output is this handler
    out = logging.Logger(config["name"], level=config["log_level"].upper())
    out.addHandler(json_handler())
    return out
