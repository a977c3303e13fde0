"""Server lifecycle hooks, run on their own thread (never an HTTP thread): Python callables given
to LabCloud, and commands from a cloud's `hooks:` config. A failing hook is logged, not fatal."""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
from collections.abc import Callable

from elastic.lab.cloud.model import HookEvent

log = logging.getLogger(__name__)

HookCallable = Callable[[str, str, str, str], object]


class HookRunner:
    def __init__(self, callables: dict[str, HookCallable | None], commands: dict[str, dict[str, str | list[str]]],
                 timeouts: dict[str, float]):
        self._callables = callables
        self._commands = commands  # cloud -> hook -> command
        self._timeouts = timeouts  # cloud -> seconds
        self._queue: queue.Queue[HookEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lab-cloud-hooks", daemon=True)
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        self._thread.start()

    def submit(self, events: list[HookEvent]) -> None:
        for event in events:
            self._idle.clear()
            self._queue.put(event)

    def stop(self) -> None:
        """Finish the hook in progress, drop the ones still queued."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._fire(event)
            if self._queue.empty():
                self._idle.set()

    def _fire(self, event: HookEvent) -> None:
        function = self._callables.get(event.hook)
        if function is not None:
            try:
                function(event.cloud, event.name, event.server_id, event.address)
            except Exception:
                log.exception("lab cloud %s: %s hook for %s failed", event.cloud, event.hook, event.name)
        command = self._commands.get(event.cloud, {}).get(event.hook)
        if command:
            self._run_command(event, command)

    def _run_command(self, event: HookEvent, command: str | list[str]) -> None:
        env = {**os.environ, "ELASTIC_LAB_CLOUD": event.cloud, "ELASTIC_LAB_SERVER_NAME": event.name,
               "ELASTIC_LAB_SERVER_ID": event.server_id, "ELASTIC_LAB_SERVER_ADDRESS": event.address,
               "ELASTIC_LAB_HOOK": event.hook}
        try:
            result = subprocess.run(command, shell=isinstance(command, str), env=env, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=self._timeouts.get(event.cloud, 60.0))
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("lab cloud %s: %s hook command for %s failed: %s", event.cloud, event.hook, event.name, exc)
            return
        if result.returncode != 0:
            log.error("lab cloud %s: %s hook command for %s exited %d: %s", event.cloud, event.hook, event.name,
                      result.returncode, result.stderr.strip()[-500:])
