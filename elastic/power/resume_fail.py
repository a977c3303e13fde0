"""ResumeFail: a node that never came up loses its servers (as in suspend) and goes back to idle~,
unless it failed `resume_fail.max_failures` times within `resume_fail.window`: then it stays DOWN
for an admin, with a reason that says so."""

from __future__ import annotations

from collections.abc import Sequence

from elastic.errors import SlurmError
from elastic.power.outcome import Failure, Outcome, report_failures
from elastic.power.services import Services
from elastic.power.suspend import release


def resume_fail(nodes: Sequence[str], svc: Services) -> Outcome:
    outcome = release(nodes, svc, why="resume-fail")
    policy = svc.config.resume_fail
    counts = svc.history.record_node_failures(sorted(outcome.served), svc.clock(), policy.window)
    back: list[str] = []
    for node in sorted(outcome.served):
        count = counts.get(node, 0)
        if count >= policy.max_failures:
            outcome.fail([node], Failure(
                "repeated-failure",
                f"failed to resume {count} times in {policy.window:.0f}s; "
                "fix the pool, then scontrol update nodename=... state=resume",
                permanent=True,
            ))
        else:
            back.append(node)
    if back:
        # ResumeTimeout left the node down~, which never recovers by itself: make it idle~ again.
        try:
            svc.slurm.set_state(back, "resume")
            svc.log.info("slurm.set_state", nodes=back, state="resume")
        except SlurmError as error:
            svc.log.error("slurm.set_state", ok=False, nodes=back, state="resume", error=str(error))
    report_failures(outcome.failed, svc, transient_state="down")
    return outcome
