from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog

from elastic.logs import configure_logging, new_run_id

SECRET = "s3cr3t-value-7f3a"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _logger(path: Path, **overrides):
    options = {"log_file": path, "run_id": "r-1", "command": "resume", "interactive": False, "level": "info"}
    return configure_logging(**{**options, **overrides})


def test_json_line_shape(tmp_path):
    """Each event is one JSON line: timestamp (ISO, UTC), level, event, run_id, command first, then the kwargs."""
    log_file = tmp_path / "elastic.log"
    _logger(log_file).info("resume.start", nodes=["cpu-001", "cpu-002"], count=2)
    (line,) = _lines(log_file)
    assert list(line) == ["timestamp", "level", "event", "run_id", "command", "nodes", "count"]
    assert line | {"timestamp": None} == {"timestamp": None, "level": "info", "event": "resume.start", "run_id": "r-1",
                                          "command": "resume", "nodes": ["cpu-001", "cpu-002"], "count": 2}
    assert datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).utcoffset() == timedelta(0)


def test_values_json_cannot_hold_are_written_readably(tmp_path):
    """Sets become sorted lists and other objects (paths) their str, instead of failing the log call."""
    log_file = tmp_path / "elastic.log"
    _logger(log_file).info("e", nodes={"b", "a"}, path=Path("/etc/x"))
    (line,) = _lines(log_file)
    assert (line["nodes"], line["path"]) == (["a", "b"], "/etc/x")


def test_log_file_created_with_parent_dir_and_mode_0640(tmp_path):
    """A missing log dir is created 0750 and the log file gets mode 0640."""
    log_file = tmp_path / "var" / "log" / "elastic.log"
    old = os.umask(0o022)
    try:
        _logger(log_file).info("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o750


def test_appends_to_existing_log(tmp_path):
    """Lines are appended; what earlier runs wrote is kept."""
    log_file = tmp_path / "elastic.log"
    log_file.write_text('{"event": "earlier"}\n')
    _logger(log_file).info("later")
    assert [line["event"] for line in _lines(log_file)] == ["earlier", "later"]


def test_level_filters_events(tmp_path):
    """Events below the configured level are dropped; at debug level they are kept."""
    quiet, verbose = tmp_path / "quiet.log", tmp_path / "verbose.log"
    _logger(quiet, level="info").debug("detail")
    _logger(verbose, level="debug").debug("detail")
    assert quiet.read_text() == ""
    assert [line["event"] for line in _lines(verbose)] == ["detail"]


def test_unknown_level_is_refused(tmp_path):
    """A level name we do not know is a ValueError, not silently "info"."""
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        _logger(tmp_path / "x.log", level="verbose")


def test_exception_is_logged_with_traceback(tmp_path):
    """log.exception writes the traceback into the line's "exception" field."""
    log_file = tmp_path / "elastic.log"
    try:
        raise RuntimeError("flow crashed")
    except RuntimeError:
        _logger(log_file).exception("resume.crashed")
    (line,) = _lines(log_file)
    assert line["level"] == "error" and "RuntimeError: flow crashed" in line["exception"]


@pytest.mark.parametrize("key", ["password", "OS_PASSWORD", "application_credential_secret", "auth_token",
                                 "user_data", "UserData", "munge_key", "credentials"])
def test_secret_keys_are_masked(tmp_path, key):
    """A value under a secret-looking key (any case) never reaches the log file."""
    log_file = tmp_path / "elastic.log"
    _logger(log_file).info("boot.request", **{key: SECRET}, flavor="m1.large")
    assert SECRET not in log_file.read_text()
    (line,) = _lines(log_file)
    assert line[key] == "***" and line["flavor"] == "m1.large"


def test_nested_secrets_are_masked(tmp_path):
    """Secrets inside nested dicts and lists of dicts are masked; their neighbours are kept."""
    log_file = tmp_path / "elastic.log"
    _logger(log_file).info("cloud.config", cloud={"auth": {"username": "u", "password": SECRET},
                                                  "servers": [{"name": "cpu-001", "user_data": SECRET}]})
    assert SECRET not in log_file.read_text()
    (line,) = _lines(log_file)
    assert line["cloud"] == {"auth": {"username": "u", "password": "***"},
                             "servers": [{"name": "cpu-001", "user_data": "***"}]}


def test_bound_secrets_are_masked(tmp_path):
    """A secret bound into the logger's context is masked in every later line."""
    log_file = tmp_path / "elastic.log"
    _logger(log_file).bind(token=SECRET).info("x")
    assert SECRET not in log_file.read_text()


def test_two_configurations_do_not_interfere(tmp_path):
    """Two loggers in one process keep their own file, run_id and level, and structlog stays unconfigured."""
    first_file, second_file = tmp_path / "a.log", tmp_path / "b.log"
    first = _logger(first_file, run_id="one", command="resume", level="info")
    second = _logger(second_file, run_id="two", command="suspend", level="debug")
    first.info("from-first")
    second.debug("from-second")
    first.debug("dropped")
    assert [(e["event"], e["run_id"], e["command"]) for e in _lines(first_file)] == [("from-first", "one", "resume")]
    assert [(e["event"], e["run_id"], e["command"]) for e in _lines(second_file)] == [("from-second", "two", "suspend")]
    assert not structlog.is_configured()


def test_not_interactive_writes_nothing_to_stderr(tmp_path, capsys):
    """With a log file and no terminal, stderr stays silent."""
    _logger(tmp_path / "x.log").info("resume.start", count=1)
    assert capsys.readouterr().err == ""


def test_interactive_adds_readable_line_without_colors(tmp_path, capsys):
    """Interactive runs also print one plain line per event to stderr (no ANSI colors when not a tty)."""
    _logger(tmp_path / "x.log", interactive=True).warning("resume.slow", nodes=["a", "b"], reason="no room",
                                                          password=SECRET)
    err = capsys.readouterr().err
    assert err.endswith(' warning resume.slow nodes=a,b reason="no room" password=***\n')
    assert "\033[" not in err and "{" not in err and SECRET not in err


def test_interactive_colors_on_a_tty(tmp_path, monkeypatch):
    """On a terminal the level is colored."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    _logger(None, interactive=True).error("resume.failed")
    assert "\033[31merror  \033[0m resume.failed" in terminal.getvalue()


def test_unusable_log_file_falls_back_to_stderr(tmp_path, capsys):
    """A log file that cannot be opened does not stop the program: JSON lines go to stderr after a warning."""
    (tmp_path / "file").write_text("")
    log = _logger(tmp_path / "file" / "elastic.log")
    log.info("resume.start")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in events] == ["logging.file_unusable", "resume.start"]
    assert events[0]["level"] == "warning" and events[0]["error"] == f"File exists: {tmp_path / 'file'}"


def test_symlink_at_log_path_is_refused(tmp_path, capsys):
    """A symlink at log_file is not followed (O_NOFOLLOW): its target stays untouched and lines go to stderr."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "elastic.log").symlink_to(victim)
    _logger(tmp_path / "elastic.log").info("resume.start")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in events] == ["logging.file_unusable", "resume.start"]
    assert events[0]["error"] == f"Too many levels of symbolic links: {tmp_path / 'elastic.log'}"
    assert victim.read_text() == "precious\n"


def test_full_disk_moves_lines_to_stderr_after_one_warning(capsys):
    """Writes to a full disk (/dev/full: ENOSPC) do not raise: one warning, then this and later lines go to stderr."""
    log = _logger(Path("/dev/full"))
    log.info("resume.start", count=2)
    log.warning("resume.slow")
    log.info("resume.done")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in events] == ["logging.file_failed", "resume.start", "resume.slow", "resume.done"]
    warning = events[0]
    assert (warning["level"], warning["log_file"], warning["error"]) == ("warning", "/dev/full",
                                                                         "No space left on device")
    assert (warning["run_id"], warning["command"]) == ("r-1", "resume") and "timestamp" in warning
    assert events[1]["count"] == 2


class _FailingFile:
    """A log file whose writes work `good` times, then fail with `code`."""

    def __init__(self, code: int, good: int = 0):
        self.code, self.good, self.lines, self.closed = code, good, [], False

    def write(self, data) -> int:
        if self.good <= 0:
            raise OSError(self.code, os.strerror(self.code))
        self.good -= 1
        self.lines.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EBADF, errno.EDQUOT])
def test_log_file_failing_later_moves_lines_to_stderr(tmp_path, monkeypatch, capsys, code):
    """A log file that fails after a good line: the first line is in the file, the rest on stderr, the file closed."""
    failing = _FailingFile(code, good=1)
    monkeypatch.setattr("elastic.logs._open_log", lambda path: (failing, None))
    log = _logger(tmp_path / "elastic.log")
    log.info("first")
    log.info("second", password=SECRET)
    log.info("third")
    assert [json.loads(line)["event"] for line in failing.lines] == ["first"] and failing.closed
    err = capsys.readouterr().err
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in events] == ["logging.file_failed", "second", "third"]
    assert events[0]["error"] == os.strerror(code) and SECRET not in err


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """A write that takes only part of the line is continued until the whole line is in the file."""
    class Trickle:
        def __init__(self):
            self.data = b""

        def write(self, data) -> int:
            self.data += bytes(data[:5])
            return min(5, len(data))

    trickle = Trickle()
    monkeypatch.setattr("elastic.logs._open_log", lambda path: (trickle, None))
    _logger(tmp_path / "elastic.log").info("resume.start", nodes=["cpu-001"])
    assert json.loads(trickle.data)["nodes"] == ["cpu-001"]


class _BrokenStream(io.StringIO):
    def write(self, text):
        raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))


@pytest.mark.parametrize("stderr", ["broken pipe", "closed", "none", "/dev/full"])
def test_log_file_and_stderr_both_failing_drop_lines_silently(monkeypatch, stderr):
    """When stderr fails too (a broken pipe, a closed stream, None, a full disk) lines are dropped without raising."""
    if stderr == "broken pipe":
        stream = _BrokenStream()
    elif stderr == "closed":
        stream = io.StringIO()
        stream.close()
    elif stderr == "none":
        stream = None
    else:
        stream = open("/dev/full", "w")  # noqa: SIM115 - buffered: the ENOSPC comes from flush
    monkeypatch.setattr("sys.stderr", stream)
    try:
        for interactive in (False, True):
            log = _logger(Path("/dev/full"), interactive=interactive)
            log.info("resume.start")
            log.error("resume.failed")
    finally:
        if stderr == "/dev/full":
            with contextlib.suppress(OSError):
                stream.close()  # its buffer cannot be flushed: close raises, and closes the fd all the same
            assert stream.closed


def test_interactive_file_failure_shows_readable_lines_only(capsys):
    """At a terminal a failing log file adds the warning as a readable line; no JSON is mixed in."""
    log = _logger(Path("/dev/full"), interactive=True)
    log.info("resume.start")
    log.info("resume.done")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in lines] == ["logging.file_failed", "resume.start", "resume.done"]
    assert not any(line.startswith("{") for line in lines)
    assert 'log_file=/dev/full error="No space left on device"' in lines[0]


def test_concurrent_failures_warn_once(capsys):
    """Threads logging at once to a failing file give exactly one warning and keep every line."""
    log = _logger(Path("/dev/full"))
    threads = [threading.Thread(target=lambda i=i: [log.info("tick", thread=i, n=n) for n in range(20)])
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events.count("logging.file_failed") == 1 and events.count("tick") == 160


def test_no_log_file_and_not_interactive_writes_json_to_stderr(capsys):
    """Without a log file, JSON lines go to stderr (23.02+ slurmscriptd captures it)."""
    _logger(None).info("suspend.start")
    assert json.loads(capsys.readouterr().err)["event"] == "suspend.start"


def test_new_run_id_is_short_and_unique():
    """Run ids are short hex strings, distinct across many runs."""
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(run_id) == 8 and int(run_id, 16) >= 0 for run_id in ids)
