"""Adaptive pacing (elastic.pacing): the AIMD decisions, the poll cadence, and the shared file."""

from __future__ import annotations

import json

import pytest

from elastic import pacing
from elastic.pacing import (
    FLOOR,
    FORGET_AFTER,
    START_RATE,
    UNPACED_ABOVE,
    BootMemory,
    Pacer,
    PaceState,
    current_rate,
    fresh,
    learned_boot,
    merged,
    poll_pause,
    share,
    started,
    throttled,
)


class FakeTime:
    def __init__(self, now: float = 1000.0):
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# ---- the decisions --------------------------------------------------------------------------


def test_a_run_starts_at_start_rate_and_doubles_each_second_until_unpaced():
    """Slow start: START_RATE at first, twice that a second later, unpaced once past UNPACED_ABOVE."""
    state = fresh(100.0)
    assert current_rate(state, 100.0, None) == START_RATE
    assert current_rate(state, 101.0, None) == 2 * START_RATE
    seconds_to_unpaced = 1
    while START_RATE * 2 ** seconds_to_unpaced < UNPACED_ABOVE:
        seconds_to_unpaced += 1
    assert current_rate(state, 100.0 + seconds_to_unpaced, None) is None


def test_a_run_skips_the_slow_start_when_a_run_reached_the_unpaced_rate_lately_without_a_refusal():
    """Unpaced at once within FORGET_AFTER of another run's unpaced pace; a slow start when that is
    older, unknown, or a refusal came after it; a run already past its slow start is left alone."""
    now = 10_000.0
    assert started(fresh(now), now - 60, now) == PaceState()
    assert current_rate(started(fresh(now), now - 60, now), now, None) is None
    assert started(fresh(now), now - FORGET_AFTER - 1, now) == fresh(now)
    assert started(fresh(now), None, now) == fresh(now)
    refused_since = throttled(fresh(now - 30), now - 30, sent_at=now - 30, retry_after=1.0, observed=40.0,
                              ceiling=None)
    assert started(refused_since, now - 60, now) == refused_since
    assert started(PaceState(blocked_until=now + 2), now - 60, now) == PaceState(blocked_until=now + 2)


def test_the_ceiling_is_never_exceeded():
    """With max_rate, neither the slow start nor the additive growth goes above it."""
    assert current_rate(fresh(0.0), 30.0, 7.0) == 7.0
    after = throttled(fresh(0.0), 1.0, sent_at=1.0, retry_after=None, observed=10.0, ceiling=7.0)
    assert current_rate(after, 1000.0, 7.0) == 7.0
    assert current_rate(PaceState(), 0.0, 7.0) == 7.0


def test_a_refusal_halves_what_was_sent_and_blocks_for_retry_after():
    """429 at 40 requests in the last second: rate 20, nothing before Retry-After."""
    state = throttled(fresh(0.0), 10.0, sent_at=9.9, retry_after=2.0, observed=40.0, ceiling=None)
    assert state.rate == 20.0
    assert state.blocked_until == 12.0
    assert state.throttled_at == 10.0
    assert not state.slow_start


def test_the_rate_grows_back_additively_after_a_refusal():
    """After halving to 20/s the rate grows by a fifth of that (4/s) each second without refusal."""
    state = throttled(fresh(0.0), 10.0, sent_at=9.9, retry_after=None, observed=40.0, ceiling=None)
    assert current_rate(state, 10.0, None) == 20.0
    assert current_rate(state, 15.0, None) == pytest.approx(40.0)
    assert current_rate(state, 10.0 + (UNPACED_ABOVE - 20.0) / 4 + 1, None) is None


def test_refusals_of_requests_sent_before_the_decrease_do_not_halve_again():
    """A burst of 429s from requests already in flight is one signal: one halving."""
    first = throttled(fresh(0.0), 10.0, sent_at=9.95, retry_after=1.0, observed=40.0, ceiling=None)
    again = throttled(first, 10.01, sent_at=9.97, retry_after=3.0, observed=40.0, ceiling=None)
    assert again.rate == first.rate
    assert again.blocked_until == pytest.approx(13.01)
    later = throttled(first, 12.0, sent_at=11.5, retry_after=None, observed=100.0, ceiling=None)
    assert later.rate == pytest.approx(current_rate(first, 12.0, None) / 2)
    # When latency held us below the rate, what we really sent is halved.
    slow = throttled(first, 12.0, sent_at=11.5, retry_after=None, observed=12.0, ceiling=None)
    assert slow.rate == 6.0


def test_the_rate_never_drops_below_the_floor():
    """However many refusals come, at least FLOOR requests a second."""
    state = fresh(0.0)
    for i in range(40):
        state = throttled(state, float(i), sent_at=float(i), retry_after=None, observed=0.0, ceiling=None)
    assert state.rate == pytest.approx(FLOOR)


def test_the_newer_decrease_wins_a_merge_and_the_longer_block_holds():
    """Two runs' views of one cloud: the later refusal's rate, the later Retry-After."""
    mine = PaceState(rate=10.0, at=5.0, step=2.0, throttled_at=5.0, blocked_until=9.0)
    theirs = PaceState(rate=4.0, at=6.0, step=0.8, throttled_at=6.0, blocked_until=7.0)
    result = merged(mine, theirs, 10.0)
    assert (result.rate, result.throttled_at, result.blocked_until) == (4.0, 6.0, 9.0)
    assert merged(fresh(0.0), theirs, 10.0).rate == 4.0
    assert merged(mine, fresh(0.0), 10.0).rate == 10.0


def test_a_new_run_forgets_a_refusal_older_than_forget_after():
    """A refusal a quarter of an hour ago: the new run slow-starts instead of crawling back."""
    theirs = PaceState(rate=2.0, at=0.0, step=0.5, throttled_at=0.0)
    now = pacing.FORGET_AFTER + 1
    assert merged(fresh(now), theirs, now) == fresh(now)
    assert merged(fresh(10.0), theirs, 10.0).rate == 2.0


def test_a_paced_cloud_is_shared_among_the_runs_using_it():
    """Three runs at once each send a third; unpaced stays unpaced."""
    assert share(30.0, 3) == 10.0
    assert share(30.0, 0) == 30.0
    assert share(None, 3) is None


# ---- the poll cadence -------------------------------------------------------------------------


def test_polls_see_a_server_within_about_a_second():
    """With no expected boot time, the pause plus the list's duration is about a second."""
    assert poll_pause(0.0, first_created=None, expected_boot=None, list_seconds=0.1, fixed=None) == pytest.approx(0.9)
    assert poll_pause(0.0, first_created=None, expected_boot=None, list_seconds=0.3, fixed=None) == pytest.approx(0.7)


def test_a_slow_list_takes_at_most_half_the_time():
    """A list that takes 2 s is followed by a 2 s pause."""
    assert poll_pause(0.0, first_created=None, expected_boot=None, list_seconds=2.0, fixed=None) == 2.0


def test_polls_are_sparse_until_the_first_server_is_due():
    """Expected boot 60 s: early polls at most EARLY_POLL_MAX apart, then every second near the due time."""
    early = poll_pause(100.0, first_created=100.0, expected_boot=60.0, list_seconds=0.05, fixed=None)
    assert early == pacing.EARLY_POLL_MAX
    near = poll_pause(157.0, first_created=100.0, expected_boot=60.0, list_seconds=0.05, fixed=None)
    assert near == pytest.approx(2.5)
    due = poll_pause(160.0, first_created=100.0, expected_boot=60.0, list_seconds=0.05, fixed=None)
    assert due == pytest.approx(0.95)


def test_the_admins_poll_wins():
    """timeouts.poll set: a fixed cadence, as before."""
    assert poll_pause(0.0, first_created=0.0, expected_boot=60.0, list_seconds=0.05, fixed=5.0) == 5.0


def test_the_expected_boot_is_the_lower_quartile_of_what_a_run_saw():
    """The first servers are not missed; a run that saw none keeps the old value."""
    assert learned_boot(None, [12.0, 10.0, 11.0, 30.0]) == 11.0
    assert learned_boot(7.0, []) == 7.0


# ---- the Pacer: threads of one run, and runs sharing a file ----------------------------------


def test_a_pacer_spaces_requests_at_its_rate():
    """Paced at 10/s after a refusal: the requests that follow are 0.1 s apart."""
    time = FakeTime()
    pacer = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep)
    for _ in range(20):
        pacer.wait()  # 20 requests in the last second
    pacer.refused(retry_after=None)
    assert pacer.rate() == 10.0
    starts = []
    for _ in range(3):
        pacer.wait()
        starts.append(time.now)
    assert starts[1] - starts[0] == pytest.approx(0.1, abs=0.01)
    assert starts[2] - starts[1] == pytest.approx(0.1, abs=0.01)


def test_a_pacer_honours_retry_after():
    """After a 429 with Retry-After: 3, the next request waits three seconds."""
    time = FakeTime()
    pacer = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep)
    pacer.wait()
    pacer.refused(retry_after=3.0)
    before = time.now
    pacer.wait()
    assert time.now - before == pytest.approx(3.0)


def test_a_refusal_seen_by_one_run_slows_the_other(tmp_path):
    """Two runs on one controller: the second run's next sync takes the first run's halved rate."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    one = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="one")
    two = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="two")
    one.wait()
    two.wait()
    for _ in range(39):
        one.wait()
    one.refused(retry_after=2.0)  # 40 in the last second: the cloud's rate is 20
    time.now += 1.0
    two.sync()
    assert two.state.throttled_at == one.state.throttled_at
    # Both runs use the cloud: each gets half of the rate.
    assert two.rate() == pytest.approx(current_rate(one.state, time.now, None) / 2)
    stored = json.loads(shared.read_text())["clouds"]["lab"]
    assert set(stored["runs"]) == {"one", "two"}
    assert stored["state"]["rate"] == 20.0


def test_a_refusal_on_one_cloud_leaves_the_others_unpaced(tmp_path):
    """The shared state is per cloud: a 429 from lab says nothing about other."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    lab = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared)
    other = Pacer("other", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared)
    lab.wait()
    lab.refused(retry_after=5.0)
    time.now += 10.0  # slow start is over
    other.sync()
    assert other.rate() is None
    before = time.now
    other.wait()
    assert time.now == before


def test_a_run_after_one_that_reached_the_unpaced_rate_starts_unpaced_until_a_refusal(tmp_path):
    """The first run slow-starts to the unpaced rate and says so; the next run on the controller
    sends at that pace from its first request; after a refusal, a new run takes the refused rate."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    one = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="one")
    one.wait()
    assert one.rate() == START_RATE
    time.now += 10.0  # past the slow start, but no burst yet: living long is no proof
    one.sync()
    assert one.rate() is None
    assert "unpaced_at" not in json.loads(shared.read_text())["clouds"]["lab"]
    for _ in range(int(START_RATE)):
        one.wait()
    time.now += 0.5
    one.sync()
    assert json.loads(shared.read_text())["clouds"]["lab"]["unpaced_at"] == time.now
    reached = time.now
    one.close()
    time.now += 120.0
    two = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="two")
    two.wait()
    assert two.rate() is None
    time.now += 2.0
    two.sync()  # skipped the slow start, sent no burst: the note stays the first run's
    assert json.loads(shared.read_text())["clouds"]["lab"]["unpaced_at"] == reached
    for _ in range(39):
        two.wait()
    two.refused(retry_after=1.0)
    two.close()
    three = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="three")
    three.sync()
    assert three.state.throttled_at == two.state.throttled_at and three.rate() is not None


def test_a_finished_run_no_longer_takes_a_share(tmp_path):
    """close() drops the run's heartbeat; a crashed run's expires after HEARTBEAT_SECONDS."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    one = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="one")
    two = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="two")
    one.sync()
    two.sync()
    one.close()
    assert set(json.loads(shared.read_text())["clouds"]["lab"]["runs"]) == {"two"}


@pytest.mark.parametrize("runs", [[], "x", 5, None])
def test_close_leaves_a_shared_file_whose_runs_are_not_a_mapping_as_it_is(tmp_path, runs):
    """close() runs after the outcome is decided: an edited file must not make it raise."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    one = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, run_id="one")
    one.sync()
    shared.write_text(json.dumps({"clouds": {"lab": {"runs": runs}}}))
    one.close()
    assert json.loads(shared.read_text())["clouds"]["lab"]["runs"] == runs


@pytest.mark.parametrize("content", ["{not json", '{"clouds": []}', '["x"]',
                                     '{"clouds": {"lab": {"state": {"rate": "fast"}, "runs": 3}}}'])
def test_a_broken_shared_file_is_ignored_with_a_warning(tmp_path, content):
    """Never a reason to stop: the run paces on its own and rewrites the file."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    shared.write_text(content)
    warnings: list[str] = []
    pacer = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, warn=warnings.append)
    pacer.wait()
    assert pacer.rate() == START_RATE
    assert json.loads(shared.read_text())["clouds"]["lab"]["runs"]
    if content != '{"clouds": {"lab": {"state": {"rate": "fast"}, "runs": 3}}}':
        assert warnings and str(shared) in warnings[0]


def test_an_unreadable_shared_file_is_ignored_with_a_warning(tmp_path):
    """A path that cannot be read as a file (a directory is in the way; a mode-0 file is not
    unreadable to root, which CI runs as): one warning, and the run paces on its own."""
    time = FakeTime()
    shared = tmp_path / "pacing.json"
    shared.mkdir()
    warnings: list[str] = []
    pacer = Pacer("lab", ceiling=None, clock=time.clock, sleep=time.sleep, shared=shared, warn=warnings.append)
    pacer.wait()
    assert pacer.rate() == START_RATE
    pacer.wait()  # the second turn does not warn again
    assert len(warnings) == 1 and str(shared) in warnings[0]


def test_boot_memory_keeps_each_clouds_expected_boot(tmp_path):
    """record() then expected(), per cloud, beside the pacing state."""
    memory = BootMemory(tmp_path / "pacing.json")
    assert memory.expected("lab") is None
    memory.record("lab", [10.0, 12.0, 11.0])
    assert memory.expected("lab") == 10.0
    assert memory.expected("other") is None


def test_boot_memory_that_cannot_be_written_warns_and_knows_nothing(tmp_path):
    """A state dir that cannot be made (a file is in the way): a warning on record, None on expected."""
    warnings: list[str] = []
    (tmp_path / "file").write_text("")
    memory = BootMemory(tmp_path / "file" / "pacing.json", warn=warnings.append)
    memory.record("lab", [10.0])
    assert memory.expected("lab") is None
    assert warnings
