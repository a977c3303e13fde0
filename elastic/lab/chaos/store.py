"""The model's state file: JSON, read and written under an exclusive flock, replaced by rename;
beside it a journal (JSON lines: time, node, what happened), appended to under the same lock.

The stand-in scontrol (several at once, from several programs) and the soak runner all go
through `ModelStore.change` or `ModelStore.read`, so each update is atomic as in slurmctld.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from elastic.lab.chaos.model import SlurmModel


class ModelStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.journal_path = self.path.with_name(self.path.name + ".journal")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self) -> SlurmModel:
        return SlurmModel.from_json(json.loads(self.path.read_text()))

    def _save(self, model: SlurmModel) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(model.to_json()))
        os.replace(temporary, self.path)
        lines = [json.dumps([when, name, text]) + "\n"
                 for name, node in model.nodes.items() for when, text in node.events]
        if lines:
            with open(self.journal_path, "a") as journal:
                journal.writelines(lines)
        for node in model.nodes.values():
            node.events.clear()

    def journal(self, node: str) -> list[tuple[float, str]]:
        """What happened to `node` in Slurm, oldest first."""
        if not self.journal_path.exists():
            return []
        found = []
        with open(self.journal_path) as journal:
            for line in journal:
                when, name, text = json.loads(line)
                if name == node:
                    found.append((float(when), text))
        return found

    def create(self, model: SlurmModel) -> None:
        with self._locked():
            self._save(model)

    def read(self) -> SlurmModel:
        with self._locked():
            return self._load()

    @contextlib.contextmanager
    def change(self) -> Iterator[SlurmModel]:
        """The model, saved on a clean exit (an exception leaves the file as it was)."""
        with self._locked():
            model = self._load()
            yield model
            self._save(model)
