"""`elastic check`: is this YAML, these clouds and this slurmctld a working power-saving setup?

Each check is a row (ok, warn, FAIL, skip) saying what it looked at and, when not ok, what to fix.
Cloud checks authenticate and look names up; nothing is created or changed. Without a running
slurmctld the Slurm checks are skipped (and said to be) and the programs checked are the installed
console scripts instead of the ones slurm.conf names.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from elastic import slurm_conf_lines, userdata
from elastic.admin import slurm_conf
from elastic.admin.table import format_table
from elastic.cloud import Cloud, Flavor, Limits
from elastic.config import Config, Pool, PoolCloud
from elastic.errors import CloudError, CloudErrorKind, ConfigError, SlurmError
from elastic.history import HistoryView
from elastic.slurm import version_text

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
# slurmctld accepts a CLOUD node that registers with at least this share of its RealMemory.
CLOUD_MEMORY_SHARE = 0.9


class SlurmSettings(Protocol):
    """What check reads from slurmctld (elastic.slurm.Slurm)."""

    def config(self) -> Mapping[str, str]: ...
    def node_fields(self) -> Mapping[str, Mapping[str, str]]: ...


@dataclass(frozen=True)
class Check:
    status: str
    subject: str
    detail: str
    fix: str = ""


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def render(checks: list[Check]) -> str:
    return format_table(["RESULT", "CHECK", "DETAIL", "FIX"], [[c.status, c.subject, c.detail, c.fix] for c in checks])


def config_check(config: Config) -> Check:
    nodes = sum(len(p.node_names) for p in config.pools.values())
    return Check(OK, "config", f"{config.source}: cluster {config.cluster}, {len(config.pools)} pools, "
                               f"{nodes} nodes, {len(config.clouds)} clouds")


# ---- clouds --------------------------------------------------------------------------------------


def cloud_checks(config: Config, name: str, cloud: Cloud) -> list[Check]:
    """Authenticate, resolve every pool's names on this cloud, compare flavors, report quota."""
    entries = [(pool_name, pool, entry) for pool_name, pool in config.pools.items()
               for entry in pool.clouds if entry.cloud == name]
    try:
        limits = cloud.limits()
        ours = len(cloud.list_servers(config.cluster))
    except CloudError as error:
        checks = [Check(FAIL, f"cloud {name}", _error_text(error), cloud_fix(error, config, name))]
        return checks + [Check(SKIP, f"pool {p} on {name}", f"cloud {name} not usable") for p, _, _ in entries]
    checks = [Check(OK, f"cloud {name}", "authenticated")]
    flavors: dict[str, Flavor] = {}
    for pool_name, pool, entry in entries:
        flavor, pool_checks = _pool_on_cloud(pool_name, pool, entry, cloud, config.clouds[name].cloud or name)
        checks += pool_checks
        if flavor is not None:
            flavors[pool_name] = flavor
    demand = [(pool_name, _pool_cap(pool, entry), flavors[pool_name])
              for pool_name, pool, entry in entries if pool_name in flavors]
    checks.append(quota_check(name, limits, demand, ours))
    return checks


def _pool_on_cloud(pool_name: str, pool: Pool, entry: PoolCloud, cloud: Cloud,
                   os_cloud: str) -> tuple[Flavor | None, list[Check]]:
    where = f"pool {pool_name} on {entry.cloud}"
    index = pool.clouds.index(entry)
    keys = {"flavor": f"pools.{pool_name}.boot.flavor", "image": f"pools.{pool_name}.boot.image",
            "network": f"pools.{pool_name}.clouds[{index}].network"}
    checks: list[Check] = []
    flavor_name, image = pool.flavor_on(entry), pool.image_on(entry)
    flavor: Flavor | None = None
    try:
        found = cloud.flavor(flavor_name)
    except CloudError as error:
        checks.append(Check(FAIL, f"{where}: flavor", _error_text(error),
                            _lookup_fix(error, os_cloud, "flavor", keys["flavor"])))
    else:
        flavor = found
        checks += size_checks(pool_name, pool, found)
    if flavor is not None:
        try:
            cloud.resolve_boot(flavor_name, image, entry.network)
        except CloudError as error:
            what = error.resource[0] if error.resource is not None else "image"
            checks.append(Check(FAIL, f"{where}: image and network", _error_text(error),
                                _lookup_fix(error, os_cloud, what, keys.get(what, f"pools.{pool_name}"))))
        else:
            checks.append(Check(OK, f"{where}: image and network", f"image {image}, network {entry.network} found"))
        floating_ip = entry.floating_ip
        if floating_ip:
            checks.append(_lookup(f"{where}: floating IP network",
                                  lambda: _find_network(cloud, flavor_name, image, floating_ip),
                                  f"network {floating_ip} found", os_cloud, "network",
                                  f"pools.{pool_name}.clouds[{index}].floating_ip"))
    key_name = pool.boot.key_name
    if key_name:
        checks.append(_lookup(f"{where}: key pair", lambda: cloud.find_keypair(key_name),
                              f"key pair {key_name} found", os_cloud, "keypair", f"pools.{pool_name}.boot.key_name"))
    return flavor, checks


def _find_network(cloud: Cloud, flavor: str, image: str, network: str) -> None:
    """Look a network up by name: resolve_boot resolves a network the same way whatever its role."""
    cloud.resolve_boot(flavor, image, network)


def _lookup(subject: str, call: Callable[[], object], ok_text: str, cloud_name: str, listing: str, key: str) -> Check:
    try:
        call()
    except CloudError as error:
        return Check(FAIL, subject, _error_text(error), _lookup_fix(error, cloud_name, listing, key))
    return Check(OK, subject, ok_text)


def _pool_cap(pool: Pool, entry: PoolCloud) -> int:
    size = len(pool.node_names)
    return size if entry.max_nodes is None else min(size, entry.max_nodes)


def size_checks(pool_name: str, pool: Pool, flavor: Flavor) -> list[Check]:
    """The flavor must hold the node slurm.conf describes, or slurmd registers with less and
    slurmctld drains the node ("Low socket*core*thread count", "Low RealMemory")."""
    s = pool.slurm
    subject = f"pool {pool_name}: flavor {flavor.name} size"
    key = f"pools.{pool_name}.slurm"
    checks = []
    if s.cpus > flavor.vcpus:
        checks.append(Check(FAIL, subject, f"CPUs={s.cpus} but the flavor has {flavor.vcpus} vCPUs",
                            f"set {key}.cpus: {flavor.vcpus} or pick a bigger flavor"))
    elif s.cpus < flavor.vcpus:
        checks.append(Check(WARN, subject,
                            f"CPUs={s.cpus} leaves {flavor.vcpus - s.cpus} of {flavor.vcpus} vCPUs unused",
                            f"set {key}.cpus: {flavor.vcpus}"))
    # A VM reports a little less than the flavor's RAM (the kernel keeps some); slurmctld accepts a
    # CLOUD node down to 90% of RealMemory.
    suggestion = int(flavor.ram * 0.95)
    if s.real_memory * CLOUD_MEMORY_SHARE > flavor.ram:
        checks.append(Check(FAIL, subject, f"RealMemory={s.real_memory} MB but the flavor has {flavor.ram} MB: "
                                           "the node can never register", f"set {key}.real_memory: {suggestion}"))
    elif s.real_memory > flavor.ram:
        checks.append(Check(WARN, subject, f"RealMemory={s.real_memory} MB is above the flavor's {flavor.ram} MB: "
                                           "registers only within Slurm's 10% tolerance, jobs may not fit",
                            f"set {key}.real_memory: {suggestion}"))
    if not checks:
        checks.append(Check(OK, subject, f"CPUs={s.cpus} RealMemory={s.real_memory} fit {flavor.vcpus} vCPUs, "
                                         f"{flavor.ram} MB"))
    return checks


def quota_check(cloud_name: str, limits: Limits, demand: list[tuple[str, int, Flavor]], ours: int) -> Check:
    """Headroom for the pools' largest size on this cloud, beyond the servers we already run there.

    A pool on several clouds counts fully on each: this is an upper bound, so a shortfall is a
    warning (the pool falls back to its next cloud), not a failure.
    """
    instances = max(sum(count for _, count, _ in demand) - ours, 0)
    cores = sum(count * f.vcpus for _, count, f in demand)
    ram = sum(count * f.ram for _, count, f in demand)
    short = []
    parts = []
    for label, limit, used, need in (("instances", limits.instances, limits.instances_used, instances),
                                     ("cores", limits.cores, limits.cores_used, cores),
                                     ("RAM MB", limits.ram, limits.ram_used, ram)):
        if limit < 0:
            parts.append(f"{label} unlimited")
            continue
        free = max(limit - used, 0)
        parts.append(f"{label} {free} free/{need} wanted")
        if free < need:
            short.append(label)
    detail = f"{', '.join(parts)} (pools at full size, {ours} servers of ours running)"
    if short:
        return Check(WARN, f"cloud {cloud_name}: quota", detail,
                     f"not enough {', '.join(short)}: raise the quota or set max_nodes for this cloud")
    return Check(OK, f"cloud {cloud_name}: quota", detail)


def template_checks(config: Config) -> list[Check]:
    """Render each pool's user-data for its first node on each of its clouds (output not shown)."""
    checks = []
    for pool_name, pool in config.pools.items():
        template = pool.boot.user_data
        if template is None:
            continue
        node = pool.node_names[0]
        subject = f"pool {pool_name}: user-data {template.name}"
        try:
            for entry in pool.clouds:
                context = {**pool.boot.user_data_vars, "node": node, "pool": pool_name, "cluster": config.cluster,
                           "cloud": entry.cloud, "controller": config.controller}
                userdata.encode_user_data(userdata.render_user_data(template, context), where=str(template))
        except ConfigError as error:
            checks.append(Check(FAIL, subject, str(error),
                                f"fix the template or pools.{pool_name}.boot.user_data_vars"))
        else:
            checks.append(Check(OK, subject, f"renders for {node} on {', '.join(e.cloud for e in pool.clouds)}"))
    return checks


# ---- Slurm ---------------------------------------------------------------------------------------


def program_check(label: str, path: str | None) -> Check:
    """slurmctld silently disables power saving for a program that is not absolute, not
    executable, or group/world writable; a script whose interpreter is gone fails on every call."""
    subject = f"{label} program"
    if not path or path == "(null)":
        return Check(FAIL, subject, "not set", f"set {label}= in slurm.conf (elastic slurm-conf prints it)")
    program = Path(path)
    if not program.is_absolute():
        return Check(FAIL, subject, f"{path} is not an absolute path", "use the absolute path")
    try:
        info = program.stat()
    except OSError as exc:
        return Check(FAIL, subject, f"{path}: {exc.strerror}", "install elastic there or fix the path")
    if not stat.S_ISREG(info.st_mode):
        return Check(FAIL, subject, f"{path} is not a regular file", "point it at the installed program")
    if not info.st_mode & 0o111:
        return Check(FAIL, subject, f"{path} is not executable", f"chmod 0755 {path}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Check(FAIL, subject, f"{path} is group or world writable: slurmctld disables power saving",
                     f"chmod go-w {path}")
    interpreter = _interpreter(program)
    if interpreter is not None and not os.access(interpreter, os.X_OK):
        return Check(FAIL, subject, f"{path} runs {interpreter}, which is not an executable file",
                     "reinstall elastic (its scripts name the Python they were installed with)")
    return Check(OK, subject, path)


def _interpreter(program: Path) -> str | None:
    try:
        with open(program, "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").split()
    return parts[0] if parts and parts[0].startswith("/") else None


def running_version(running: Mapping[str, str]) -> tuple[tuple[int, ...], str | None]:
    """The version the running settings are judged by, and why it is assumed when it is not shown."""
    try:
        return slurm_conf.slurm_version(running), None
    except SlurmError as error:
        return slurm_conf_lines.DEFAULT_VERSION, f"{error}: judged as Slurm 22.05"


def slurm_checks(config: Config, running: Mapping[str, str]) -> list[Check]:
    """The power-save settings slurmctld runs with (`scontrol show config`), against our timeouts,
    judged by the running version: what it needs (slurm_conf_lines.VERSIONED) and what is defunct there."""
    version, assumed = running_version(running)
    if assumed:
        checks = [Check(WARN, "slurmctld", f"answers; {assumed}", "check `scontrol show config | grep SLURM_VERSION`")]
    elif version < (22, 5):
        checks = [Check(WARN, "slurmctld", f"answers, Slurm {running['SLURM_VERSION']}: older than 22.05, "
                                           "which elastic was not tested with", "upgrade Slurm")]
    else:
        checks = [Check(OK, "slurmctld", f"answers, Slurm {running['SLURM_VERSION']}")]
    for label in ("ResumeProgram", "SuspendProgram", "ResumeFailProgram"):
        checks.append(program_check(label, running.get(label)))
    suspend_time = slurm_conf.number(running.get("SuspendTime"))
    if suspend_time is None:
        checks.append(Check(FAIL, "SuspendTime", f"{running.get('SuspendTime', 'not shown')}: power saving is off",
                            "set SuspendTime=600 (seconds idle before a node is powered down)"))
    else:
        checks.append(Check(OK, "SuspendTime", f"{suspend_time} s"))
    checks.append(_timeout_check("ResumeTimeout", slurm_conf.number(running.get("ResumeTimeout")),
                                 config.timeouts.boot, "timeouts.boot", slurm_conf_lines.SLURMD_START_MARGIN,
                                 "resume must boot the server and slurmd must register within it"))
    checks.append(_timeout_check("SuspendTimeout", slurm_conf.number(running.get("SuspendTimeout")),
                                 config.timeouts.delete, "timeouts.delete", slurm_conf_lines.SUSPEND_MARGIN,
                                 "slurmctld may reuse the node while its server is still being deleted",
                                 failing=False))
    params = slurm_conf.items(running.get("SlurmctldParameters"))
    checks.append(addresses_check(config.slurm.addresses, version, params))
    if "enable_configless" not in params:
        checks.append(Check(WARN, "SlurmctldParameters", "enable_configless is not set: slurmd started with "
                                  "--conf-server (as etc/cloud-init/compute.yaml.j2 does) gets no slurm.conf",
                            "add enable_configless to SlurmctldParameters"))
    else:
        checks.append(Check(OK, "SlurmctldParameters", running.get("SlurmctldParameters", "")))
    if version < (23, 2) and "cloud" not in slurm_conf.items(running.get("PrivateData")):
        checks.append(Check(WARN, "PrivateData", "cloud is not set: Slurm before 23.02 hides powered-down CLOUD "
                                  "nodes, so elastic status cannot show them", "set PrivateData=cloud"))
    if version < (23, 11) and "noaddrcache" not in slurm_conf.items(running.get("CommunicationParameters")):
        checks.append(Check(WARN, "CommunicationParameters", "NoAddrCache is not set: before 23.11 a node that comes "
                                  "back with a new address may be unreachable", "add NoAddrCache"))
    tree_width = slurm_conf.number(running.get("TreeWidth"))
    if version < (23, 11) and (tree_width is None or tree_width < 65533):
        checks.append(Check(WARN, "TreeWidth", f"{running.get('TreeWidth')}: before 23.11 slurmctld forwards "
                                  "messages through nodes it may have no address for", "set TreeWidth=65533"))
    for entry in slurm_conf_lines.defunct(version):
        if entry.item.lower() in slurm_conf.items(running.get(entry.key)):
            checks.append(Check(WARN, f"{entry.key}: {entry.item}", f"set, but {entry.why}",
                                f"remove {entry.item} from {entry.key} in slurm.conf"))
    return checks


def addresses_check(addresses: str, version: tuple[int, ...], params: set[str]) -> Check:
    """How slurmctld learns the nodes' addresses with this `slurm.addresses` at this version.

    Before 23.11 a CLOUD node's address is whatever was last set: resume's `scontrol update
    nodeaddr=` (scontrol), or slurmd's registration with cloud_reg_addrs, or DNS with cloud_dns.
    From 23.11 every registration sets NodeAddr to the address slurmd connected from (and
    NodeHostName to its hostname), so what resume sends only bridges until the node registers.
    """
    shown = version_text(version)
    if tuple(version) >= (23, 11):
        if addresses == "scontrol":
            return Check(OK, "slurm.addresses", f"scontrol: Slurm {shown} sets NodeAddr to the address slurmd "
                                                "registers from; the address resume sends only bridges until then "
                                                "('none' would do as well)")
        return Check(OK, "slurm.addresses", f"none: Slurm {shown} sets NodeAddr and NodeHostName when slurmd registers")
    if addresses == "scontrol":
        return Check(OK, "slurm.addresses", f"scontrol: resume sends each node's address when its server is ACTIVE "
                                            f"(Slurm {shown} keeps it until the node powers down)")
    found = params & {"cloud_reg_addrs", "cloud_dns"}
    if not found:
        return Check(FAIL, "slurm.addresses",
                     f"none, but Slurm {shown} runs with neither cloud_reg_addrs nor cloud_dns: "
                     "slurmctld never learns the nodes' addresses",
                     "add cloud_reg_addrs to SlurmctldParameters, or set slurm.addresses: scontrol")
    how = "slurmd's registration (cloud_reg_addrs)" if "cloud_reg_addrs" in found else "DNS (cloud_dns)"
    return Check(OK, "slurm.addresses", f"none: slurmctld takes each node's address from {how}")


def _timeout_check(name: str, value: int | None, ours: float, key: str, margin: int, why: str, *,
                   failing: bool = True) -> Check:
    wanted = int(ours) + margin
    if value is None:
        return Check(FAIL if failing else WARN, name, "not set", f"set {name}={wanted}")
    if value <= ours:
        return Check(FAIL if failing else WARN, name, f"{value} s is not more than {key} ({ours:g} s): {why}",
                     f"set {name}={wanted} or lower {key}")
    if value < wanted:
        return Check(WARN, name, f"{value} s leaves less than {margin} s beyond {key} ({ours:g} s)",
                     f"set {name}={wanted}")
    return Check(OK, name, f"{value} s")


def node_checks(config: Config, running_nodes: Mapping[str, Mapping[str, str]], *,
                version: tuple[int, ...] = slurm_conf_lines.DEFAULT_VERSION) -> list[Check]:
    differences = slurm_conf.node_differences(config, running_nodes, version=version)
    if not differences:
        return [Check(OK, "slurm.conf nodes", "every pool node is a CLOUD node with the pool's CPUs, memory, "
                                              "features and partition")]
    return [Check(FAIL, "slurm.conf nodes", f"{d.subject}: YAML gives {d.want}, slurmctld has {d.have}",
                  "include `elastic slurm-conf` output in slurm.conf, restart slurmctld") for d in differences]


def slurm_unavailable(reason: str, programs: slurm_conf_lines.Programs) -> list[Check]:
    checks = [Check(SKIP, "slurmctld", f"not reachable ({reason}): Slurm checks skipped",
                    "run check on the slurmctld host once Slurm is up")]
    for label, path in (("ResumeProgram", programs.resume), ("SuspendProgram", programs.suspend),
                        ("ResumeFailProgram", programs.resume_fail)):
        result = program_check(label, str(path))
        checks.append(Check(result.status, f"{result.subject} (installed)", result.detail, result.fix))
    return checks


def history_checks(config: Config, history: HistoryView, now: float) -> list[Check]:
    """What the programs' runs found and left (the state dir): a cloud that did not answer them, a
    pool's permanent error on a cloud, deletes still pending. One row per cloud with any."""
    from elastic.admin.table import duration
    from elastic.hostlists import compress

    down, problems, pending = history.clouds_down(), history.problems(), history.pending_deletes()
    checks = []
    for name in config.clouds:
        found = []
        if name in down:
            found.append(f"did not answer a run {duration(now - down[name]['at'])} ago (down for "
                         f"{duration(now - down[name]['since'])}): {down[name]['error']}")
        for pool, entry in sorted(problems.get(name, {}).items()):
            found.append(f"pool {pool}: {entry['kind']}: {entry['error']} ({duration(now - entry['at'])} ago; "
                         "its nodes fall back to the pool's next cloud)")
        waiting = sorted(node for node, clouds in pending.items() if name in clouds)
        if waiting:
            found.append(f"{len(waiting)} delete(s) pending for {compress(waiting)}")
        if found:
            fix = "elastic reconcile --apply deletes what is pending once the cloud answers" if waiting else \
                "fix the cause; the next run that succeeds on this cloud clears it"
            checks.append(Check(WARN, f"cloud {name}: runs", "; ".join(found), fix))
    return checks


def run_all(config: Config, clouds: Mapping[str, Cloud], slurm: SlurmSettings | None, *, slurm_error: str | None,
            programs: slurm_conf_lines.Programs, history: HistoryView | None = None, now: float = 0.0) -> list[Check]:
    """Every check in table order; `slurm` None (with `slurm_error`) when slurmctld is not reachable.
    The clouds are checked in parallel: one that does not answer costs its own api_timeout only."""
    checks = [config_check(config)]
    checks += template_checks(config)
    if clouds:
        with ThreadPoolExecutor(max_workers=len(clouds), thread_name_prefix="check") as pool:
            for rows in pool.map(lambda item: cloud_checks(config, *item), clouds.items()):
                checks += rows
    if history is not None:
        checks += history_checks(config, history, now)
    if slurm is None:
        return checks + slurm_unavailable(slurm_error or "unknown", programs)
    try:
        running = slurm.config()
        nodes = slurm.node_fields()
    except SlurmError as error:
        return checks + slurm_unavailable(str(error), programs)
    return checks + slurm_checks(config, running) + node_checks(config, nodes, version=running_version(running)[0])


# ---- fixes for cloud errors ----------------------------------------------------------------------


def _error_text(error: CloudError) -> str:
    return f"{error.kind.value}: {error.message}"


def cloud_fix(error: CloudError, config: Config, name: str) -> str:
    cloud = config.clouds[name]
    entry = cloud.cloud or name
    if error.kind is CloudErrorKind.AUTH:
        return f"check the credentials of entry {entry!r} in {cloud.clouds_yaml}"
    if error.kind is CloudErrorKind.CONFIG:
        return f"check entry {entry!r} in {cloud.clouds_yaml} (auth_url, region, file readable by this user)"
    if error.kind in (CloudErrorKind.TRANSIENT, CloudErrorKind.RATE_LIMITED, CloudErrorKind.UNREACHABLE):
        return f"is the cloud up and reachable from here? auth_url of {entry!r} in {cloud.clouds_yaml}"
    return f"see the cloud's logs; entry {entry!r} in {cloud.clouds_yaml}"


def _lookup_fix(error: CloudError, cloud: str, listing: str, key: str) -> str:
    if error.kind is CloudErrorKind.NOT_FOUND:
        return f"see `openstack --os-cloud {cloud} {listing} list`; fix {key}"
    return "retry; if it persists, see the cloud's status"
