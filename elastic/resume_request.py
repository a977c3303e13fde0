"""SLURM_RESUME_FILE: the jobs behind a ResumeProgram call, in both schemas Slurm has used.

22.05:   {"jobs": [{"job_id": 1, "nodes": "cn[1-2]"}], "all_nodes": "cn[1-2]"}
         (a manual `scontrol update state=power_up` gives "jobs": [])
23.02+:  {"all_nodes_resume": "cn[1-3]", "jobs": [{"job_id": 1, "nodes_alloc": "cn[1-4]",
         "nodes_resume": "cn[1-3]", "partition": "cloud", "features": "c1", "reservation": null,
         "oversubscribe": "OK", "extra": null}]}   (26.05 adds "exclusive" and "priority")

23.02 renamed "nodes" to "nodes_resume" and "all_nodes" to "all_nodes_resume" (same meaning: the
nodes this call resumes) and added the rest. Keys we do not use are ignored. The node list in argv
stays authoritative; this file only says which jobs wait for which nodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from elastic.errors import UsageError
from elastic.hostlists import expand

ENV = "SLURM_RESUME_FILE"


@dataclass(frozen=True)
class ResumeJob:
    job_id: int
    nodes: tuple[str, ...]  # this job's nodes that this call resumes (not all it was allocated)
    partition: str | None = None
    features: str | None = None
    reservation: str | None = None
    # Every node the job was allocated, those this call resumes included (23.02+; empty on 22.05).
    nodes_alloc: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResumeRequest:
    all_nodes: tuple[str, ...]
    jobs: tuple[ResumeJob, ...] = ()


def parse_resume_file(text: str, *, source: str = ENV) -> ResumeRequest:
    """Parse either schema; bad JSON or a wrong shape is a one-line UsageError naming `source`."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{source}: expected a JSON object, got {_kind(document)}")
    if "all_nodes_resume" in document:
        all_nodes = _nodes(document, "all_nodes_resume", source, "")
    elif "all_nodes" in document:
        all_nodes = _nodes(document, "all_nodes", source, "")
    else:
        raise UsageError(f"{source}: has neither all_nodes_resume (23.02+) nor all_nodes (22.05)")
    jobs = document.get("jobs", [])
    if not isinstance(jobs, list):
        raise UsageError(f"{source}: jobs: expected a list, got {_kind(jobs)}")
    return ResumeRequest(all_nodes=all_nodes,
                         jobs=tuple(_job(job, source, f"jobs[{index}].") for index, job in enumerate(jobs)))


def _job(job: Any, source: str, where: str) -> ResumeJob:
    if not isinstance(job, dict):
        raise UsageError(f"{source}: {where[:-1]}: expected an object, got {_kind(job)}")
    job_id = job.get("job_id")
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise UsageError(f"{source}: {where}job_id: expected an integer, got {_kind(job_id)}")
    nodes_key = "nodes_resume" if "nodes_resume" in job else "nodes"
    return ResumeJob(
        job_id=job_id,
        nodes=_nodes(job, nodes_key, source, where),
        partition=_optional_str(job, "partition", source, where),
        features=_optional_str(job, "features", source, where),
        reservation=_optional_str(job, "reservation", source, where),
        nodes_alloc=_nodes(job, "nodes_alloc", source, where),
    )


def _nodes(container: dict[str, Any], key: str, source: str, where: str) -> tuple[str, ...]:
    value = container.get(key)
    if value is None or value == "":  # a job with no node left to resume has "" (or no key)
        return ()
    if not isinstance(value, str):
        raise UsageError(f"{source}: {where}{key}: expected a hostlist string, got {_kind(value)}")
    try:
        return tuple(expand(value))
    except UsageError as exc:
        raise UsageError(f"{source}: {where}{key}: {exc}") from None


def _optional_str(job: dict[str, Any], key: str, source: str, where: str) -> str | None:
    value = job.get(key)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{source}: {where}{key}: expected a string or null, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
