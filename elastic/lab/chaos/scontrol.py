"""The stand-in `scontrol` of the soak: answers from and applies to the model's state file.

Installed as a small executable (`write_scontrol`) whose shebang is this Python and which names
the state file, because slurmctld's programs run with no PATH and an env of SLURM_CONF only.
It speaks what the product runs (elastic/slurm.py): `-a -o show node`, `show config`, `ping`,
`--version`, `update nodename=... state=... [reason=...]`, `update nodename=... nodeaddr=...
[nodehostname=...]`. Errors are printed on stderr as `slurm_update error: ...` with exit 1.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from elastic.lab.chaos.model import ScontrolError
from elastic.lab.chaos.store import ModelStore

SCRIPT = """\
#!{python}
import sys
from elastic.lab.chaos.scontrol import main
sys.exit(main({state!r}, sys.argv[1:]))
"""


def write_scontrol(directory: Path, state_file: Path) -> Path:
    script = Path(directory) / "scontrol"
    script.write_text(SCRIPT.format(python=sys.executable, state=str(state_file)))
    script.chmod(0o755)
    return script


def main(state_file: str, argv: Sequence[str]) -> int:
    store = ModelStore(Path(state_file))
    args = [arg for arg in argv if arg not in ("-a", "-o", "--all", "--oneliner")]
    try:
        if args == ["--version"]:
            sys.stdout.write(f"slurm {store.read().timing.version}\n")
        elif args == ["ping"]:
            sys.stdout.write("Slurmctld(primary) at localhost is UP\n")
        elif args[:2] == ["show", "node"] or args[:2] == ["show", "nodes"]:
            model = store.read()
            if len(args) > 2:
                wanted = args[2]
                if wanted not in model.nodes:
                    sys.stdout.write(f"Node {wanted} not found\n")
                    return 1
                sys.stdout.write(model.show_node_line(model.nodes[wanted]) + "\n")
            else:
                sys.stdout.write(model.show_node())
        elif args[:2] == ["show", "config"]:
            sys.stdout.write(store.read().show_config(time.time()))
        elif args[:1] == ["update"]:
            refused: ScontrolError | None = None
            with store.change() as model:
                try:  # as slurmctld: the nodes it could change stay changed when another is refused
                    model.update(args[1:], time.time(), who=f"pid{os.getppid()}")
                except ScontrolError as error:
                    refused = error
            if refused is not None:
                raise refused
        else:
            sys.stderr.write(f"invalid command: {' '.join(argv)}\n")
            return 1
    except ScontrolError as error:
        sys.stderr.write(f"slurm_update error: {error}\n")
        return 1
    return 0
