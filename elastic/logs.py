"""Structured logs (structlog): one JSON object per line, appended to the log file.

Every line carries timestamp (ISO 8601, UTC), level, event, run_id and command, then the event's
own keys, so `jq 'select(.run_id=="...")'` follows one program run among the concurrent ones
slurmctld starts. An admin at a terminal also gets one readable line per event on stderr.

Secrets never reach a log: values of keys that look like passwords, tokens, credentials, munge keys
or user-data are masked, in nested dicts and lists too (design invariant 6).

Logging never stops the work: a log file that cannot be opened (or is a symlink: it is opened with
O_NOFOLLOW) or that fails a write later (disk full, I/O error) sends that line and every later one
to stderr, after one warning line; when stderr fails too, lines are dropped.

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
import threading
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
    """A logger bound to run_id and command, writing JSON lines to `log_file` (created 0640, its
    directory 0750) and, when `interactive`, readable lines to stderr.

    A log file that cannot be opened does not stop the program (slurmctld would then wait for
    ResumeTimeout on nodes nobody serves): the JSON lines go to stderr instead, after a warning.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(LEVELS)}")
    file, file_error = _open_log(log_file) if log_file is not None else (None, None)
    output = _Output(file=file, json_to_stderr=file is None and not interactive, console=interactive,
                     log_file=log_file)
    logger: FilteringBoundLogger = structlog.wrap_logger(
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
    redacted: EventDict = _redact(event_dict)
    return redacted


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: REDACTED if isinstance(key, str) and SECRET_KEY.search(key) else _redact(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item) for item in value]
    return value


def _open_log(path: Path) -> tuple[BinaryIO | None, str | None]:
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Unbuffered append: each event is one write(2) with O_APPEND, so lines from concurrent
        # programs interleave whole instead of mixing. O_NOFOLLOW: a symlink planted at the log
        # path must not make us append to whatever it points at.
        return open(path, "ab", buffering=0,
                    opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW, 0o640)), None
    except OSError as exc:
        return None, _os_error_text(exc)


def _os_error_text(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else (exc.strerror or str(exc))


def _render(logger: WrappedLogger, method_name: str,
            event_dict: EventDict) -> tuple[tuple[str, dict[str, Any]], dict[str, Any]]:
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


def _console_line(event: dict[str, Any], colors: bool) -> str:
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
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ",".join(str(item) for item in items)
    if isinstance(value, str) and (" " in value or not value):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class _Output:
    """The structlog "logger" at the end of the chain: gets the JSON line and the event per call.

    Never raises: a failed write to the log file moves this and every later line to stderr (after
    one `logging.file_failed` warning), and a failed write to stderr is dropped.
    """

    def __init__(self, *, file: BinaryIO | None, json_to_stderr: bool, console: bool, log_file: Path | None = None):
        self._file = file
        self._json_to_stderr = json_to_stderr
        self._console = console
        self._log_file = log_file
        self._switch = threading.Lock()  # flows log from worker threads

    def write(self, json_line: str, event: dict[str, Any]) -> None:
        file = self._file
        if file is not None:
            try:
                _write_all(file, (json_line + "\n").encode("utf-8"))
            except (OSError, ValueError) as exc:
                self._file_failed(file, exc, event)
        self._to_stderr(json_line, event)

    debug = info = msg = warning = warn = error = exception = critical = fatal = write

    def _file_failed(self, file: BinaryIO, exc: Exception, event: dict[str, Any]) -> None:
        with self._switch:
            if self._file is not file:  # another thread already switched
                return
            self._file = None
            self._json_to_stderr = not self._console
        try:
            file.close()
        except (OSError, ValueError):
            pass
        error = _os_error_text(exc) if isinstance(exc, OSError) else str(exc)
        warning = {key: event[key] for key in ("timestamp",) if key in event}
        warning |= {"level": "warning", "event": "logging.file_failed"}
        warning |= {key: event[key] for key in ("run_id", "command") if key in event}
        warning |= {"log_file": str(self._log_file) if self._log_file else None, "error": error,
                    "detail": "this and later lines go to stderr"}
        self._to_stderr(json.dumps(warning, ensure_ascii=False), warning)

    def _to_stderr(self, json_line: str, event: dict[str, Any]) -> None:
        stream = sys.stderr  # looked up per event: the CLI and tests may replace it
        if stream is None or not (self._json_to_stderr or self._console):
            return
        try:
            if self._json_to_stderr:
                stream.write(json_line + "\n")
            if self._console:
                stream.write(_console_line(event, colors=_isatty(stream)) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone too (a closed pipe, a full disk): nowhere left to say it


def _write_all(file: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        if written is None:  # non-blocking file with nothing written: never for a log, but do not spin
            raise OSError(0, "write made no progress")
        view = view[written:]


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (OSError, ValueError):
        return False
