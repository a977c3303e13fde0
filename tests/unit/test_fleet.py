"""The fleet: clouds asked in parallel, each cloud's error as data scoped to its nodes, and the
per-cloud breaker that stops asking a dead cloud in this run and probes it briefly in the next."""

from __future__ import annotations

import threading
import time

import structlog

from elastic.cloud import ACTIVE
from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.errors import CloudError, CloudErrorKind
from elastic.fleet import Fleet
from elastic.testing import MemoryCloud, MemoryHistory

from tests.support.power import CONFIG, make_services


def _meta(node: str, pool: str = "cpu") -> dict[str, str]:
    return {META_CLUSTER: "test", META_NODE: node, META_POOL: pool}


def _log():
    return structlog.wrap_logger(structlog.testing.CapturingLogger())


def test_scope_is_the_pools_clouds_or_every_cloud_for_a_node_in_no_pool(tmp_path):
    """A node's servers are looked for on its pool's clouds; a node in no pool on every cloud."""
    svc, _, _, _ = make_services(tmp_path)
    fleet = svc.fleet()
    assert fleet.scope("cpu-001") == ("alpha", "beta")
    assert fleet.scope("gpu-1") == ("beta",)
    assert fleet.scope("old-7") == ("alpha", "beta")


def test_find_returns_a_dead_clouds_error_as_data_and_still_sees_the_others(tmp_path):
    """A cloud that cannot be listed is in `unseen`; servers on the other cloud are found, and only
    nodes whose pools use the dead cloud are blind there."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["beta"].add("gpu-1", metadata=_meta("gpu-1", "gpu"))
    clouds["alpha"].fail_next("list", CloudErrorKind.UNREACHABLE, times=2)
    fleet = svc.fleet()
    sighting = fleet.find(["cpu-001", "gpu-1"])
    assert set(sighting.unseen) == {"alpha"} and [s.name for s in sighting.of("gpu-1")] == ["gpu-1"]
    assert fleet.blind_spots(["cpu-001", "gpu-1"], sighting) == {"cpu-001": ["alpha"], "gpu-1": []}


def test_a_delete_logs_its_duration_on_the_fleets_monotonic_clock(tmp_path):
    """The seconds a delete took come from the monotonic clock the fleet was given."""
    svc, clouds, _, _ = make_services(tmp_path)
    server = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    ticks = iter([10.0, 12.5])
    captured = structlog.testing.CapturingLogger()
    fleet = Fleet(svc.config, svc.clouds, MemoryHistory(), log=structlog.wrap_logger(captured, processors=[]),
                  monotonic=lambda: next(ticks))
    assert fleet.delete([server], why="test").accepted == [server]
    assert [c.kwargs["seconds"] for c in captured.calls if c.kwargs["event"] == "cloud.delete"] == [2.5]


def test_gpu_only_nodes_never_ask_a_cloud_their_pool_does_not_use(tmp_path):
    """Looking for nodes of a pool only on beta sends nothing to alpha."""
    svc, clouds, _, _ = make_services(tmp_path)
    svc.fleet().find(["gpu-1", "gpu-2"])
    assert clouds["alpha"].calls == [] and [op for op, _ in clouds["beta"].calls] == ["list"]


class _SlowCloud(MemoryCloud):
    """Every list takes `delay` seconds of real time (a cloud that answers slowly)."""

    delay: float = 0.3

    def list_servers(self, cluster, names=None):
        time.sleep(self.delay)
        return super().list_servers(cluster, names)


def test_clouds_are_asked_in_parallel(tmp_path):
    """Two clouds that each take 0.3 s to list are looked at in about 0.3 s, not 0.6 s."""
    svc, _, _, _ = make_services(tmp_path)
    svc.clouds = {"alpha": _SlowCloud("alpha"), "beta": _SlowCloud("beta")}
    started = time.monotonic()
    svc.fleet().find(["cpu-001"])
    assert time.monotonic() - started < 0.55


def test_a_cloud_that_gives_no_answer_is_not_asked_again_in_the_run_and_is_remembered(tmp_path):
    """One timed-out call stops the run asking that cloud (no request leaves) and marks it down."""
    history = MemoryHistory()
    cloud = MemoryCloud("alpha")
    cloud.fail_next("list", CloudErrorKind.UNREACHABLE, final=True)
    svc, _, _, _ = make_services(tmp_path)
    fleet = Fleet(svc.config, {"alpha": cloud}, history, log=_log())
    guard = fleet.clouds["alpha"]
    for _ in range(3):
        try:
            guard.list_servers("test", ["cpu-001"])
        except CloudError as error:
            assert error.kind is CloudErrorKind.UNREACHABLE and not error.retryable
    assert [op for op, _ in cloud.calls] == ["list"]
    assert "alpha" in history.clouds_down() and guard.stopped is not None


def test_two_refused_connections_in_a_row_stop_asking_but_one_does_not(tmp_path):
    """A refused connection is tried once more; a second refusal in a row stops the run asking."""
    svc, _, _, _ = make_services(tmp_path)
    cloud = MemoryCloud("alpha")
    fleet = Fleet(svc.config, {"alpha": cloud}, MemoryHistory(), log=_log())
    cloud.fail_next("list", CloudErrorKind.UNREACHABLE)
    assert fleet.find(["cpu-001"]).unseen == {}  # retried and answered
    cloud.fail_next("list", CloudErrorKind.UNREACHABLE, times=2)
    assert set(fleet.find(["cpu-001"]).unseen) == {"alpha"}
    assert fleet.clouds["alpha"].stopped is not None


def test_a_cloud_marked_down_is_probed_once_with_the_short_timeout(tmp_path):
    """The next run probes a cloud an earlier run found dead, with probe_timeout; a failed probe
    stops the run asking it, so each call fails at once."""
    svc, _, _, _ = make_services(tmp_path, extra="")
    history = MemoryHistory()
    history.mark_cloud_down("alpha", "no answer", 1.0)
    cloud = MemoryCloud("alpha")
    cloud.fail_next("probe", CloudErrorKind.UNREACHABLE)
    fleet = Fleet(svc.config, {"alpha": cloud}, history, log=_log())
    assert set(fleet.find(["cpu-001"]).unseen) == {"alpha"}
    assert set(fleet.find(["cpu-002"]).unseen) == {"alpha"}
    assert cloud.calls == [("probe", "10")]
    assert history.clouds_down()["alpha"]["since"] == 1.0


def test_a_probe_that_answers_closes_the_breaker(tmp_path):
    """A cloud marked down whose probe answers is used as usual and forgotten as down."""
    svc, _, _, _ = make_services(tmp_path)
    history = MemoryHistory()
    history.mark_cloud_down("alpha", "no answer", 1.0)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=_meta("cpu-001"))
    fleet = Fleet(svc.config, {"alpha": cloud}, history, log=_log())
    assert [s.name for s in fleet.find(["cpu-001"]).of("cpu-001")] == ["cpu-001"]
    assert [op for op, _ in cloud.calls] == ["probe", "list"] and history.clouds_down() == {}


def test_concurrent_callers_wait_for_one_probe(tmp_path):
    """Threads that use a suspect cloud at once share one probe."""
    svc, _, _, _ = make_services(tmp_path)
    history = MemoryHistory()
    history.mark_cloud_down("alpha", "no answer", 1.0)
    cloud = MemoryCloud("alpha")
    guard = Fleet(svc.config, {"alpha": cloud}, history, log=_log()).clouds["alpha"]
    threads = [threading.Thread(target=guard.list_servers, args=("test", ["cpu-001"])) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [op for op, _ in cloud.calls].count("probe") == 1


def test_refused_credentials_stop_the_run_asking_but_do_not_mark_the_cloud_down(tmp_path):
    """After a 401 the run stops asking that cloud; it is not recorded as not answering."""
    svc, _, _, _ = make_services(tmp_path)
    history = MemoryHistory()
    cloud = MemoryCloud("alpha")
    cloud.fail_next("list", CloudErrorKind.AUTH)
    fleet = Fleet(svc.config, {"alpha": cloud}, history, log=_log())
    fleet.find(["cpu-001"])
    fleet.find(["cpu-001"])
    assert [op for op, _ in cloud.calls] == ["list"] and history.clouds_down() == {}


def test_delete_reports_errors_per_server_and_releases_floating_ips_of_floating_pools(tmp_path):
    """Deletes run per cloud; a failing one is reported by server id; a server of a pool whose
    cloud uses floating IPs has them released through the cloud even when Nova shows none."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_FLOATING_CONFIG)
    a = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"), status=ACTIVE)
    b = clouds["beta"].add("cpu-002", metadata=_meta("cpu-002"), status=ACTIVE)
    clouds["beta"].fail_next("delete", CloudErrorKind.CONFLICT)
    deletion = svc.fleet().delete([a, b], why="test")
    assert [s.id for s in deletion.accepted] == [a.id] and set(deletion.failed) == {b.id}
    assert ("release_floating_ips", a.id) in clouds["alpha"].calls
    assert not any(op == "release_floating_ips" for op, _ in clouds["beta"].calls)


# The fixtures' pools, with the cpu pool taking floating IPs on alpha.
_FLOATING_CONFIG = CONFIG.replace("- {cloud: alpha, network: private}",
                                  "- {cloud: alpha, network: private, floating_ip: public}")
