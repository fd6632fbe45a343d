"""One logging set-up for every sdserve process: a timestamp and a level on every line, text or
JSON (`--log-format json`, for log collectors), and third parties' chatter a user cannot act on
kept out."""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_QUIET = {
    "alembic": logging.WARNING,  # "Context impl SQLiteImpl." and each migration's docstring
    "uvicorn.error": logging.WARNING,  # its start-up lines: sdserve logs what runs where itself
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "botocore": logging.WARNING,
    "urllib3": logging.WARNING,
    "procrastinate": logging.WARNING,
    "diffusers": logging.ERROR,
    "transformers": logging.ERROR,
    "huggingface_hub": logging.ERROR,
}
"""Loggers whose INFO (and for the model libraries, WARNING) lines say nothing actionable."""


def quiet_model_libraries() -> None:
    """Keep the model libraries' chatter out of this process and those it spawns: transformers
    and diffusers read these when imported (a worker imports them later); without, every
    start prints warnings about optional packages (torchvision) it lacks."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def setup_logging(fmt: LogFormat = "text", access_log: bool = False) -> None:
    """Configure the root logger of this process (and, through the environment, the model
    libraries' own verbosity in the worker processes it spawns)."""
    quiet_model_libraries()
    formatter: dict[str, object] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
        if fmt == "json"
        else {"format": TEXT_FORMAT}
    )
    loggers: dict[str, object] = {name: {"level": level} for name, level in _QUIET.items()}
    loggers["uvicorn.access"] = {"level": logging.INFO if access_log else logging.WARNING}
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"sdserve": formatter},
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "sdserve"},
            },
            "root": {"level": logging.INFO, "handlers": ["stderr"]},
            "loggers": loggers,
        }
    )
    # uvicorn's loggers carry handlers of their own (made before this): theirs go, so every
    # line takes this format, once.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
