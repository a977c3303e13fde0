"""What a flow did for each node, and how an unserved node is shown in Slurm."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from elastic.errors import PERMANENT_KINDS, CloudError, LocalError

if TYPE_CHECKING:
    from elastic.power.services import Services

# Slurm keeps the reason as typed; long reasons make `sinfo -R` unreadable.
_REASON_MAX = 200


@dataclass(frozen=True)
class Failure:
    kind: str  # a CloudErrorKind value, or one of ours: "timeout", "config", "internal", "no-pool", "limit"
    message: str
    permanent: bool = False  # the admin must act: the node goes DOWN instead of back to idle~

    @property
    def reason(self) -> str:
        text = f"elastic: {self.kind}: {self.message}"
        return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def failure_from(error: CloudError) -> Failure:
    """The Failure a CloudError stands for; its reason names the cloud once and the kind once."""
    message = f"{error.cloud}: {error.message}" if error.cloud else error.message
    return Failure(error.kind.value, message, permanent=error.kind in PERMANENT_KINDS)


def internal_failure(exc: BaseException) -> Failure:
    """The Failure for an exception no flow expected: a fault of this machine, or our own bug."""
    if isinstance(exc, LocalError):
        return Failure("local", str(exc))
    return Failure("internal", f"{type(exc).__name__}: {exc}")


@dataclass
class Outcome:
    """Per node: served with an address (or None when Slurm learns it itself), or failed."""

    served: dict[str, str | None] = field(default_factory=dict)
    failed: dict[str, Failure] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)  # deleted by a suspend while we booted it
    # Served, but a delete could not happen yet: node -> clouds that did not answer (see History).
    deferred: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, nodes: Iterable[str], failure: Failure) -> None:
        for node in nodes:
            self.served.pop(node, None)
            self.failed[node] = failure

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def failures_by_kind(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for node, failure in sorted(self.failed.items()):
            grouped[failure.kind].append(node)
        return dict(grouped)


def slurm_updates(failed: dict[str, Failure], *, transient_state: str,
                  permanent_states: tuple[str, ...] = ("down",)) -> list[tuple[str, str, list[str]]]:
    """Group failed nodes into as few scontrol calls as possible: (state, reason, nodes), in order.

    Permanent failures end DOWN (a broken image or credential must not burn quota on every job);
    others get `transient_state`: for resume that is power_down_force, which requeues the job now
    instead of at ResumeTimeout and returns the node to idle~.
    """
    groups: dict[tuple[bool, str], list[str]] = defaultdict(list)
    for node, failure in sorted(failed.items()):
        groups[(failure.permanent, failure.reason)].append(node)
    calls: list[tuple[str, str, list[str]]] = []
    for (permanent, reason), nodes in groups.items():
        for state in (permanent_states if permanent else (transient_state,)):
            calls.append((state, reason, nodes))
    return calls


def report_failures(failed: dict[str, Failure], svc: Services, *, transient_state: str,
                    permanent_states: tuple[str, ...] = ("down",)) -> None:
    """Put every failed node in its Slurm state with its reason; a failing scontrol is logged."""
    from elastic.errors import SlurmError

    for state, reason, nodes in slurm_updates(failed, transient_state=transient_state,
                                              permanent_states=permanent_states):
        try:
            svc.slurm.set_state(nodes, state, reason)
            svc.log.info("slurm.set_state", nodes=nodes, state=state, reason=reason)
        except SlurmError as error:
            svc.log.error("slurm.set_state", ok=False, nodes=nodes, state=state, error=str(error))
