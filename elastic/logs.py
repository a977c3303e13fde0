"""Structured logs (structlog): one JSON object per line, appended to the log file.

Every line carries timestamp (ISO 8601, UTC), level, event, run_id and command, then the event's
own keys, so `jq 'select(.run_id=="...")'` follows one program run among the concurrent ones
slurmctld starts. An admin at a terminal also gets one readable line per event on stderr.

Secrets never reach a log: values of keys that look like passwords, tokens, credentials, munge keys
or user-data are masked, in nested dicts and lists too (design invariant 6).

Nothing here touches structlog's global configuration: each call builds its own logger with
`structlog.wrap_logger`, so configuring twice in one process (tests, the admin CLI) is safe.
"""

from __future__ import annotations

import enum
import json
import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
REDACTED = "***"
SECRET_KEY = re.compile(r"password|secret|token|user_?data|munge_key|credential", re.IGNORECASE)
_FIRST_KEYS = ("timestamp", "level", "event", "run_id", "command")


def new_run_id() -> str:
    """A short id, unique enough to tell apart the runs in one log file."""
    return secrets.token_hex(4)


def configure_logging(*, log_file: Path | None, run_id: str, command: str, interactive: bool,
                      level: str = "info") -> FilteringBoundLogger:
    """A logger bound to run_id and command, writing JSON lines to `log_file` (created 0640 with its
    directory) and, when `interactive`, readable lines to stderr.

    A log file that cannot be opened does not stop the program (slurmctld would then wait for
    ResumeTimeout on nodes nobody serves): the JSON lines go to stderr instead, after a warning.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(LEVELS)}")
    file, file_error = _open_log(log_file) if log_file is not None else (None, None)
    output = _Output(file=file, json_to_stderr=file is None and not interactive, console=interactive)
    logger = structlog.wrap_logger(
        output,
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            redact_secrets,
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        context_class=dict,
        cache_logger_on_first_use=False,
    ).bind(run_id=run_id, command=command)
    if file_error:
        logger.warning("logging.file_unusable", log_file=str(log_file), error=file_error)
    return logger


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask the values of secret-looking keys, at any depth."""
    return _redact(event_dict)


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: REDACTED if isinstance(key, str) and SECRET_KEY.search(key) else _redact(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]
    return value


def _open_log(path: Path) -> tuple[BinaryIO | None, str | None]:
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Unbuffered append: each event is one write(2) with O_APPEND, so lines from concurrent
        # programs interleave whole instead of mixing.
        return open(path, "ab", buffering=0, opener=lambda p, flags: os.open(p, flags, 0o640)), None
    except OSError as exc:
        return None, f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


def _render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> tuple[tuple[str, dict], dict]:
    ordered = {key: event_dict[key] for key in _FIRST_KEYS if key in event_dict}
    ordered.update((key, value) for key, value in event_dict.items() if key not in ordered)
    return (json.dumps(ordered, default=_json_default, ensure_ascii=False), ordered), {}


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


_COLORS = {"debug": "\033[2m", "info": "\033[32m", "warning": "\033[33m", "error": "\033[31m",
           "critical": "\033[31;1m"}


def _console_line(event: dict, colors: bool) -> str:
    """`10:04:05 info    resume.start count=3 nodes=cpu-001,cpu-002`, then a traceback if any."""
    level = str(event.get("level", ""))
    shown = f"{level:<7}"
    if colors:
        shown = f"{_COLORS.get(level, '')}{shown}\033[0m"
    skip = {"timestamp", "level", "event", "run_id", "command", "exception"}
    pairs = "".join(f" {key}={_short(value)}" for key, value in event.items() if key not in skip)
    text = f"{str(event.get('timestamp', ''))[11:19]} {shown} {event.get('event', '')}{pairs}"
    if event.get("exception"):
        text += "\n" + str(event["exception"]).rstrip("\n")
    return text


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(item) for item in (sorted(value, key=str) if isinstance(value, (set, frozenset)) else value))
    if isinstance(value, str) and (" " in value or not value):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class _Output:
    """The structlog "logger" at the end of the chain: gets the JSON line and the event per call."""

    def __init__(self, *, file: BinaryIO | None, json_to_stderr: bool, console: bool):
        self._file = file
        self._json_to_stderr = json_to_stderr
        self._console = console

    def write(self, json_line: str, event: dict) -> None:
        if self._file is not None:
            self._file.write((json_line + "\n").encode("utf-8"))
        stream = sys.stderr  # looked up per event: the CLI and tests may replace it
        if stream is None or not (self._json_to_stderr or self._console):
            return
        if self._json_to_stderr:
            stream.write(json_line + "\n")
        if self._console:
            stream.write(_console_line(event, colors=stream.isatty()) + "\n")
        stream.flush()

    debug = info = msg = warning = warn = error = exception = critical = fatal = write
