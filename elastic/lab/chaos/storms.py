"""Cloud faults switched on and off while the soak runs, through the emulator's own faults.

One fault at a time per cloud, each for a few seconds, mostly with one cloud left healthy: 5xx
answers, a 429 storm, lost replies (processed, then the connection reset), a refused-connection
outage (the cloud down), a black hole, quota squeezed to what is in use plus one, no valid host
for a share of boots, slow deletes. `calm()` lifts them all and restores quotas and timings.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from elastic.lab.chaos.site import QUOTAS
from elastic.lab.cloud import LabCloud

FAULTS = ("5xx", "429-storm", "reply-lost", "cloud-down", "black-hole", "quota-squeeze", "no-valid-host",
          "slow-deletes")
NORMAL_DELETE_SECONDS = 0.2


def _switch_on(lab: LabCloud, cloud: str, fault: str, rng: random.Random) -> None:
    if fault == "5xx":
        lab.set_faults(cloud, error_rate=rng.choice([0.1, 0.3, 0.5]), seed=rng.randrange(1 << 30))
    elif fault == "429-storm":
        lab.set_faults(cloud, rate_limit_per_second=rng.choice([2, 4, 8]))
    elif fault == "reply-lost":
        lab.set_faults(cloud, reply_lost_rate=rng.choice([0.1, 0.3]), seed=rng.randrange(1 << 30),
                       reply_lost_methods=rng.choice([["POST"], ["DELETE"], []]))
    elif fault == "cloud-down":
        lab.set_faults(cloud, outage="reset")
    elif fault == "black-hole":
        lab.set_faults(cloud, outage="blackhole")
    elif fault == "quota-squeeze":
        in_use = len([s for s in lab.servers(cloud) if s["status"] != "DELETED"])
        lab.set_quota(cloud, instances=in_use + 1)
    elif fault == "no-valid-host":
        lab.set_faults(cloud, no_valid_host_fraction=rng.choice([0.3, 0.6]), seed=rng.randrange(1 << 30))
    elif fault == "slow-deletes":
        lab.set_timing(cloud, delete_seconds=rng.choice([2.0, 5.0, 9.0]))
    else:
        raise ValueError(f"unknown fault {fault!r}")


def _switch_off(lab: LabCloud, cloud: str) -> None:
    lab.clear_faults(cloud)
    lab.set_quota(cloud, **QUOTAS)
    lab.set_timing(cloud, delete_seconds=NORMAL_DELETE_SECONDS)


@dataclass
class Storms:
    lab: LabCloud
    clouds: list[str]
    rng: random.Random
    faults: tuple[str, ...] = FAULTS
    on_event: Callable[[str], None] = lambda text: None
    active: dict[str, tuple[str, float]] = field(default_factory=dict)  # cloud -> (fault, until)
    switched: int = 0

    def step(self, now: float) -> None:
        """Lift faults whose time is up; now and then start one on a healthy cloud."""
        for cloud, (fault, until) in list(self.active.items()):
            if now >= until:
                _switch_off(self.lab, cloud)
                del self.active[cloud]
                self.on_event(f"fault off: {cloud} {fault}")
        healthy = [cloud for cloud in self.clouds if cloud not in self.active]
        # Mostly keep one cloud healthy, so a pool has a cloud to fall back to; now and then not.
        chance = 0.08 if len(healthy) > 1 else 0.02
        if self.faults and healthy and self.rng.random() < chance:
            cloud = self.rng.choice(healthy)
            fault = self.rng.choice(self.faults)
            duration = self.rng.uniform(15, 40) if fault == "cloud-down" else self.rng.uniform(3, 12)
            _switch_on(self.lab, cloud, fault, self.rng)
            self.active[cloud] = (fault, now + duration)
            self.switched += 1
            self.on_event(f"fault on: {cloud} {fault} for {duration:.0f}s")

    def calm(self) -> None:
        for cloud in self.clouds:
            _switch_off(self.lab, cloud)
        for cloud, (fault, _) in self.active.items():
            self.on_event(f"fault off: {cloud} {fault} (calm)")
        self.active.clear()
