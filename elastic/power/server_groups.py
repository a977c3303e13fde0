"""Our Nova server groups: one per job per cloud, named for it, deleted when their last server goes.

Nova server groups carry no metadata, so the name is what marks a group as ours:
`<cluster>-<pool>-job<id>` for a pool of this cluster's config. A group is created on demand by
the resume that first boots a server of the job on that cloud, found again by name by a later
resume of the same job, and deleted once it has no member left: after suspend and resume-fail
delete servers, and by `elastic reconcile`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from elastic.cloud import Cloud, Server, ServerGroup
from elastic.config import Config
from elastic.errors import CloudError


def group_name(cluster: str, pool: str, job_id: int) -> str:
    return f"{cluster}-{pool}-job{job_id}"


def is_ours(group: ServerGroup, config: Config) -> bool:
    """Named `<cluster>-<pool>-job<id>` for one of this config's pools."""
    match = re.fullmatch(rf"{re.escape(config.cluster)}-(.+)-job(\d+)", group.name)
    return match is not None and match.group(1) in config.pools


def job_of(group: ServerGroup) -> int | None:
    match = re.search(r"-job(\d+)$", group.name)
    return int(match.group(1)) if match else None


def find_or_create(cloud: Cloud, known: dict[str, ServerGroup] | None, name: str,
                   policy: str) -> tuple[ServerGroup, dict[str, ServerGroup]]:
    """The group named `name` on the cloud, created when missing. `known` is this run's view of
    the cloud's groups by name (None: not listed yet); the updated view is returned. Raises
    CloudError: the job then cannot boot on this cloud, and only on this cloud."""
    if known is None:
        known = {group.name: group for group in cloud.list_server_groups()}
    group = known.get(name)
    if group is None:
        group = cloud.create_server_group(name, policy)
        known[name] = group
    return group, known


@dataclass
class Cleanup:
    deleted: list[tuple[str, ServerGroup]] = field(default_factory=list)  # (cloud, group)
    failed: dict[str, str] = field(default_factory=dict)  # cloud -> error


def holding(clouds: Mapping[str, Cloud], servers: Iterable[Server], config: Config,
            log: FilteringBoundLogger) -> dict[str, set[str]]:
    """Per cloud, the ids of our groups that hold any of these servers: read before deleting them,
    so that after the deletes exactly these groups are checked for being empty. A cloud whose
    groups cannot be listed is left out (reconcile finds its empty groups later)."""
    by_cloud: dict[str, set[str]] = {}
    for server in servers:
        by_cloud.setdefault(server.cloud, set()).add(server.id)
    found: dict[str, set[str]] = {}
    for name, ids in by_cloud.items():
        try:
            groups = clouds[name].list_server_groups()
        except CloudError as error:
            log.warning("cloud.server_groups", cloud=name, ok=False, kind=error.kind.value, error=str(error))
            continue
        found[name] = {g.id for g in groups if is_ours(g, config) and ids & set(g.members)}
    return found


def delete_empty(clouds: Mapping[str, Cloud], only: Mapping[str, Iterable[str]] | None, config: Config,
                 log: FilteringBoundLogger) -> Cleanup:
    """Delete our groups that have no member left: on each cloud of `only`, those of its group ids
    (the groups whose servers a flow just deleted: a group a resume created a moment ago for a job
    whose servers are not made yet is never touched); with `only` None, every empty group of ours
    on every cloud (reconcile). A group is deleted by id, so one of the same name that a resume
    makes afterwards is not touched. A cloud that fails is named in the result and skipped: its empty
    groups are found again by the next cleanup."""
    result = Cleanup()
    targets = {name: None for name in clouds} if only is None else {name: set(ids) for name, ids in only.items()}
    for name, ids in targets.items():
        if ids is not None and not ids:
            continue
        cloud = clouds[name]
        try:
            empty = [g for g in cloud.list_server_groups()
                     if is_ours(g, config) and not g.members and (ids is None or g.id in ids)]
            for group in empty:
                cloud.delete_server_group(group.id)
                result.deleted.append((name, group))
                log.info("cloud.delete_server_group", cloud=name, group=group.name, id=group.id)
        except CloudError as error:
            result.failed[name] = str(error)
            log.warning("cloud.server_groups", cloud=name, ok=False, kind=error.kind.value, error=str(error))
    return result
