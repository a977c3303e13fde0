"""Which Slurm the real-Slurm tests run against: `--slurm` (or $ELASTIC_SLURM).

    pytest                                 # this machine's Slurm (Debian 12: 22.05)
    pytest --slurm 24.11 -m e2e            # Debian 13's, from the root /var/tmp/elastic-roots/trixie
    pytest --slurm 26.05 tests/e2e         # Debian sid's

A root is built on first use (debootstrap, about a minute or two; see elastic.lab.slurm.roots) and
this checkout is installed in its venv; the tests then start Slurm's daemons and commands inside
it. Their files must be inside the root too, so pytest's base temporary directory moves there
(removed after a session that passed). Unit tests do not care.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from elastic.lab.slurm.install import SlurmInstall, default_install, resolve

_INSTALL = pytest.StashKey[SlurmInstall]()
_OWNED_BASETEMP = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slurm", default=None, metavar="WHICH",
                     help="the Slurm of the e2e and real-Slurm tests: host (default: this machine's packages), "
                          "24.11 (or trixie), 26.05 (or sid), or a Debian root's path; default $ELASTIC_SLURM")


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path factory reads the basetemp option
def pytest_configure(config: pytest.Config) -> None:
    spec = config.getoption("--slurm")
    install = resolve(spec, build=True)
    config.stash[_INSTALL] = install
    # LocalSlurm and LabWorld (and any subprocess of ours) default to $ELASTIC_SLURM.
    os.environ["ELASTIC_SLURM"] = str(install.root) if install.root is not None else "host"
    default_install.cache_clear()
    if install.root is not None and config.option.basetemp is None:
        base = Path(tempfile.mkdtemp(prefix="pytest-", dir=install.tmpdir()))
        config.option.basetemp = str(base)
        config.stash[_OWNED_BASETEMP] = base


def pytest_report_header(config: pytest.Config) -> str:
    install = config.stash[_INSTALL]
    if not install.available():
        return f"slurm: none in {install.describe()}"
    return f"slurm: {install.version_text} from {install.describe()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = session.config.stash.get(_OWNED_BASETEMP, None)
    if base is not None and exitstatus == 0:
        shutil.rmtree(base, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    base = config.stash.get(_OWNED_BASETEMP, None)
    if base is not None and exitstatus != 0 and base.exists():
        terminalreporter.write_line(f"temporary files (logs of the Slurm daemons) kept in {base}")


@pytest.fixture(scope="session")
def slurm_install(pytestconfig: pytest.Config) -> SlurmInstall:
    """The Slurm chosen with --slurm: its `version`, `scontrol`, `programs()`, `tmpdir()`."""
    return pytestconfig.stash[_INSTALL]


@pytest.fixture(autouse=True)
def _collector_unfrozen():
    """A program's entry point run in this process freezes what its start-up made (process.resume_gc);
    the next tests get the collector as a fresh process has it."""
    yield
    import gc

    gc.unfreeze()
