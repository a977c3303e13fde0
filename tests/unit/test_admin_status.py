"""`elastic status`: rows per node and server, and every mismatch kind flagged (or rightly not)."""

from __future__ import annotations

import json

import pytest
import structlog

from elastic.admin import status
from elastic.cloud import ACTIVE, BUILDING, ERROR
from elastic.errors import SlurmError
from elastic.fleet import Fleet, NoMemory
from elastic.testing import MemoryCloud

from tests.support.admin import (
    ALLOCATED,
    IDLE,
    NOW,
    POWERING_DOWN,
    POWERING_UP,
    FakeSlurm,
    make_config,
    ours,
    slurm_nodes,
)


def problems(rows) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in rows:
        if row.problem:
            found.setdefault(row.problem, set()).add(row.node)
    return found


def test_one_row_per_node_of_every_pool_in_yaml_order(tmp_path):
    """Without servers every pool node gets exactly one row, pools in YAML order, and nothing is flagged."""
    config = make_config(tmp_path)
    rows = status.rows(config, [], slurm_nodes())
    assert [r.node for r in rows] == ["cpu-001", "cpu-002", "cpu-003", "cpu-004", "gpu-1", "gpu-2"]
    assert [r.pool for r in rows] == ["cpu"] * 4 + ["gpu"] * 2
    assert problems(rows) == {}


def test_server_of_a_powered_down_node_is_an_orphan(tmp_path):
    """A live server whose node is POWERED_DOWN (also when down~) is flagged orphan; the healthy node is not."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200)
    cloud.add("cpu-002", metadata=ours("cpu-002"), created=NOW - 7200)
    cloud.add("cpu-003", metadata=ours("cpu-003"), created=NOW - 7200)
    nodes = slurm_nodes(cpu_002="DOWN+CLOUD+POWERED_DOWN", cpu_003=IDLE)
    rows = status.rows(config, cloud.list_servers("test"), nodes)
    assert problems(rows) == {status.ORPHAN: {"cpu-001", "cpu-002"}}


def test_server_of_a_node_slurm_does_not_show_is_an_orphan(tmp_path):
    """22.05 hides powered-down CLOUD nodes without PrivateData=cloud: a server of an unshown node is an orphan."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200)
    rows = status.rows(config, cloud.list_servers("test"), {})
    assert problems(rows) == {status.ORPHAN: {"cpu-001"}}
    assert rows[0].slurm is None


def test_powered_up_node_without_server_is_missing(tmp_path):
    """IDLE+CLOUD, ALLOCATED+CLOUD and DOWN+CLOUD nodes with no live server are flagged missing."""
    config = make_config(tmp_path)
    nodes = slurm_nodes(cpu_001=IDLE, cpu_002=ALLOCATED, cpu_003="DOWN+CLOUD+NOT_RESPONDING")
    rows = status.rows(config, [], nodes)
    assert problems(rows) == {status.MISSING: {"cpu-001", "cpu-002", "cpu-003"}}


def test_powered_up_node_with_only_a_deleting_server_is_missing(tmp_path):
    """A server being deleted does not count as the node's server."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200, task_state="deleting")
    rows = status.rows(config, list(cloud.servers.values()), slurm_nodes(cpu_001=IDLE))
    assert problems(rows) == {status.MISSING: {"cpu-001"}}


def test_powering_up_node_without_server_is_not_a_mismatch(tmp_path):
    """A POWERING_UP node with no server yet is a resume in progress: noted, not flagged."""
    config = make_config(tmp_path)
    rows = status.rows(config, [], slurm_nodes(cpu_001=POWERING_UP))
    assert problems(rows) == {}
    assert rows[0].note.startswith("resume running")


def test_requested_power_changes_count_as_the_transition(tmp_path):
    """POWER_UP (requested) is like POWERING_UP and POWER_DOWN like POWERING_DOWN: nothing flagged."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200)
    nodes = slurm_nodes(cpu_001="IDLE+CLOUD+POWERED_DOWN+POWER_UP", cpu_002="IDLE+CLOUD+POWERED_DOWN+POWER_UP",
                        cpu_003="IDLE+CLOUD+POWER_DOWN")
    rows = status.rows(config, cloud.list_servers("test"), nodes)
    assert problems(rows) == {}
    assert rows[1].note.startswith("resume running")


def test_two_servers_for_one_powered_up_node_are_duplicates(tmp_path):
    """Two live servers of one ALLOCATED node, even on two clouds, give two rows flagged duplicate."""
    config = make_config(tmp_path)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 100)
    beta.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 50)
    servers = alpha.list_servers("test") + beta.list_servers("test")
    rows = status.rows(config, servers, slurm_nodes(cpu_001=ALLOCATED))
    flagged = [r for r in rows if r.node == "cpu-001"]
    assert len(flagged) == 2 and {r.problem for r in flagged} == {status.DUPLICATE}
    assert [r.server.cloud for r in flagged] == ["beta", "alpha"]  # newest first


def test_powering_down_node_is_never_flagged(tmp_path):
    """A POWERING_DOWN node is being suspended: with or without a server it is not a mismatch."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200)
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7000)
    rows = status.rows(config, cloud.list_servers("test"), slurm_nodes(cpu_001=POWERING_DOWN, cpu_002=POWERING_DOWN))
    assert problems(rows) == {}


def test_deleting_server_of_powered_down_node_is_not_an_orphan(tmp_path):
    """A server already being deleted is shown as deleting and not flagged."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200, task_state="deleting")
    rows = status.rows(config, list(cloud.servers.values()), slurm_nodes())
    assert problems(rows) == {} and rows[0].note == "deleting"


def test_server_of_a_node_in_no_pool_gets_its_own_row(tmp_path):
    """A server of ours whose node left the YAML is listed after the pools and judged like any other."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("old-7", metadata=ours("old-7", pool="old"), created=NOW - 7200)
    rows = status.rows(config, cloud.list_servers("test"), slurm_nodes())
    assert rows[-1].node == "old-7" and rows[-1].pool is None and rows[-1].problem == status.ORPHAN


def test_pool_filter_limits_the_rows(tmp_path):
    """--pool gpu shows only gpu nodes, not cpu nodes nor servers of other pools' removed nodes."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("old-7", metadata=ours("old-7", pool="old"), created=NOW - 7200)
    rows = status.rows(config, cloud.list_servers("test"), slurm_nodes(), pools=["gpu"])
    assert [r.node for r in rows] == ["gpu-1", "gpu-2"]


def test_without_slurm_only_duplicates_are_flagged(tmp_path):
    """When Slurm cannot be asked, a lone server is not called an orphan, but two servers are duplicates."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7200)
    cloud.add("cpu-002", metadata=ours("cpu-002"), created=NOW - 7200)
    cloud.add("cpu-002", metadata=ours("cpu-002"), created=NOW - 7100)
    rows = status.rows(config, cloud.list_servers("test"), None)
    assert problems(rows) == {status.DUPLICATE: {"cpu-002"}}


def test_collect_reads_every_cloud_and_survives_slurm_failure(tmp_path):
    """collect lists our servers on every cloud; a Slurm failure gives nodes=None unless Slurm is required."""
    config = make_config(tmp_path)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    alpha.add("cpu-001", metadata=ours("cpu-001"))
    beta.add("gpu-1", metadata=ours("gpu-1", pool="gpu"))
    beta.add("cpu-002", metadata=ours("cpu-002", cluster="someone-else"))
    slurm = FakeSlurm(fail_reads=True)
    fleet = Fleet(config, {"alpha": alpha, "beta": beta}, NoMemory(), log=structlog.get_logger())
    snapshot = status.collect(config, fleet, slurm)
    assert sorted(s.name for s in snapshot.servers) == ["cpu-001", "gpu-1"]
    assert snapshot.nodes is None and "Unable to contact" in snapshot.slurm_error
    with pytest.raises(SlurmError):
        status.collect(config, fleet, slurm, need_slurm=True)


def test_table_and_json_show_state_server_cloud_address_and_age(tmp_path):
    """The table aligns its columns and says the problem; JSON carries the same facts per row."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 7500)
    cloud.add("cpu-002", status=BUILDING, metadata=ours("cpu-002"), created=NOW - 30)
    nodes = slurm_nodes(cpu_002=POWERING_UP, cpu_003=IDLE)
    rows = status.rows(config, cloud.list_servers("test"), nodes)
    text = status.render(rows, NOW, slurm_known=True)
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "POOL", "SLURM", "REASON", "SERVER", "CLOUD", "ADDRESS", "AGE", "PROBLEM"]
    first = lines[1]
    assert first.startswith("cpu-001") and "ACTIVE" in first and "alpha" in first and "2h05m" in first
    assert "orphan" in first and "127.10.0." in first
    assert "missing" in lines[3]
    # columns line up: every row has its POOL value where the header has POOL
    column = lines[0].index("POOL")
    assert all(line[column:column + 3] in ("cpu", "gpu") for line in lines[1:])
    as_json = json.loads(json.dumps([r.to_json(NOW, True) for r in rows]))
    assert as_json[0]["server"]["status"] == ACTIVE and as_json[0]["server"]["age_seconds"] == 7500
    assert as_json[0]["problem"] == "orphan" and as_json[1]["slurm_state"] == POWERING_UP
    assert as_json[2]["server"] is None and as_json[2]["problem"] == "missing"


def test_summary_counts_nodes_per_mismatch(tmp_path):
    """The summary line counts nodes per mismatch kind and points to reconcile."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", status=ERROR, metadata=ours("cpu-001"), created=NOW - 7200)
    rows = status.rows(config, cloud.list_servers("test"), slurm_nodes(cpu_002=IDLE))
    assert status.summary(rows) == ("6 nodes, 1 live servers; mismatches: 1 orphan, 1 missing "
                                    "(elastic reconcile shows the repairs)")
    assert status.summary(status.rows(config, [], slurm_nodes())).endswith("no mismatches")
