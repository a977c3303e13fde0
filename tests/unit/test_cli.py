"""The programs' entry points: usage and config errors exit 2 with one line, before any side effect."""

from __future__ import annotations

import pytest

from elastic import cli

from test_config import BAD


@pytest.mark.parametrize("text", [b[1] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.parametrize("entry", [cli.resume_main, cli.suspend_main, cli.resume_fail_main],
                         ids=["resume", "suspend", "resume-fail"])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, text, entry):
    """Every malformed config makes each program print one 'file:line: key: problem' line and exit 2."""
    path = tmp_path / "elastic.yaml"
    path.write_text(text)
    assert entry(["cpu-001", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"elastic: error: {path}:")


def test_malformed_hostlist_exits_2(tmp_path, capsys):
    """A hostlist that does not parse is a usage error: exit 2, one line naming it."""
    from test_config import GOOD

    path = tmp_path / "elastic.yaml"
    path.write_text(GOOD + f"state_dir: {tmp_path / 'state'}\nlog_file: {tmp_path / 'log'}\n")
    assert cli.suspend_main(["cpu-[001-", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cpu-[001-" in err


def test_missing_hostlist_is_a_usage_error(capsys):
    """Calling a program without a hostlist exits 2 with argparse's usage message."""
    with pytest.raises(SystemExit) as caught:
        cli.resume_main([])
    assert caught.value.code == 2
