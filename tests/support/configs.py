"""Pool YAML for tests: a valid file and a table of bad ones (with the line and message each must
give), and `elastic_yaml`, the one builder of the configs the integration tests run the programs with."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

GOOD = """\
cluster: engage1
clouds:
  engage1: {clouds_yaml: /etc/openstack/clouds.yaml, max_parallel: 16}
  kaizen: {clouds_yaml: clouds.yaml, region: RegionTwo}
pools:
  cpu:
    nodes: cpu-[001-004]
    partition: cloud
    slurm: {cpus: 4, real_memory: 7500, features: [cloud]}
    boot: {flavor: m1.large, image: slurm-compute, key_name: hpc}
    clouds:
      - {cloud: engage1, network: hpc-private}
      - {cloud: kaizen, network: campus, floating_ip: public, max_nodes: 16}
"""


BAD = [
    ("not-yaml", "cluster: a\n  clouds: [\n", 2, "not valid YAML"),
    ("empty", "", 1, "empty"),
    ("list-at-top", "- a\n- b\n", 1, "must be a mapping"),
    ("missing-cluster", GOOD.replace("cluster: engage1\n", ""), 1, "cluster: required key is missing"),
    ("unknown-top-key", GOOD + "pool: {}\n", 14, "pool: unknown key; did you mean 'pools'?"),
    ("unknown-nested-key", GOOD.replace("key_name: hpc", "flavour: x"), 10,
     "pools.cpu.boot.flavour: unknown key; did you mean 'flavor'?"),
    ("bad-cluster-name", GOOD.replace("cluster: engage1", "cluster: my cluster"), 1, "cluster: names may hold"),
    ("unknown-cloud", GOOD.replace("cloud: kaizen,", "cloud: kaizn,"), 13,
     "pools.cpu.clouds[1].cloud: unknown cloud 'kaizn'"),
    ("overlap", GOOD + "  more:\n    nodes: cpu-[004-006]\n    slurm: {cpus: 1, real_memory: 1}\n"
                       "    boot: {flavor: a, image: b}\n    clouds: [{cloud: engage1, network: n}]\n",
     15, "pools.more.nodes: node cpu-004 is also in pool 'cpu'"),
    ("bad-hostlist", GOOD.replace("cpu-[001-004]", "cpu-[001-"), 7, "pools.cpu.nodes:"),
    ("zero-cpus", GOOD.replace("cpus: 4", "cpus: 0"), 9,
     "pools.cpu.slurm.cpus: Input should be greater than or equal to 1 (got 0)"),
    ("memory-string", GOOD.replace("real_memory: 7500", "real_memory: lots"), 9,
     "pools.cpu.slurm.real_memory: Input should be a valid integer"),
    ("duplicate-key", GOOD.replace("    partition: cloud\n", "    partition: cloud\n    partition: other\n"), 9,
     "pools.cpu.partition: duplicate key"),
    ("no-clouds", GOOD.replace("clouds:\n  engage1: {clouds_yaml: /etc/openstack/clouds.yaml, max_parallel: 16}\n"
                               "  kaizen: {clouds_yaml: clouds.yaml, region: RegionTwo}\n", "clouds: {}\n"), 2,
     "clouds: Dictionary should have at least 1 item"),
    ("pool-without-clouds", GOOD.split("    clouds:\n")[0] + "    clouds: []\n", 11,
     "pools.cpu.clouds: Tuple should have at least 1 item"),
    ("long-metadata", GOOD.replace("key_name: hpc", "key_name: hpc, metadata: {note: " + "x" * 300 + "}"), 10,
     "255 characters"),
    ("reserved-metadata", GOOD.replace("key_name: hpc", "key_name: hpc, metadata: {elastic_node: x}"), 10, "reserved"),
    ("bad-enum", GOOD + "slurm: {addresses: dns}\n", 14, "slurm.addresses: Input should be 'scontrol' or 'none'"),
    ("missing-template", GOOD.replace("key_name: hpc", "user_data: nope.j2"), 10, "user-data template"),
    ("negative-timeout", GOOD + "timeouts: {boot: -5}\n", 14, "timeouts.boot: Input should be greater than 0"),
    ("infinite-timeout", GOOD + "timeouts: {boot: .inf}\n", 14,
     "timeouts.boot: Input should be a finite number (got inf)"),
    ("nan-timeout", GOOD + "timeouts: {poll: .nan}\n", 14, "timeouts.poll: Input should be a finite number (got nan)"),
    ("infinite-window", GOOD + "resume_fail: {window: .Inf}\n", 14,
     "resume_fail.window: Input should be a finite number"),
    ("infinite-grace", GOOD + "reconcile: {grace: .inf}\n", 14, "reconcile.grace: Input should be a finite number"),
    ("infinite-api-timeout", GOOD.replace("max_parallel: 16", "max_parallel: 16, api_timeout: .inf"), 3,
     "clouds.engage1.api_timeout: Input should be a finite number"),
    ("infinite-rate", GOOD.replace("max_parallel: 16", "max_parallel: 16, rate: .inf"), 3,
     "clouds.engage1.rate: Input should be a finite number (got inf)"),
    ("nan-cooldown", GOOD.replace("region: RegionTwo", "region: RegionTwo, cooldown: .nan"), 4,
     "clouds.kaizen.cooldown: Input should be a finite number (got nan)"),
    ("minus-infinite-cooldown", GOOD.replace("region: RegionTwo", "region: RegionTwo, cooldown: -.inf"), 4,
     "clouds.kaizen.cooldown: Input should be a finite number"),
    ("zero-parallel", GOOD.replace("max_parallel: 16", "max_parallel: 0"), 3, "clouds.engage1.max_parallel"),
    ("rate-and-max-rate", GOOD.replace("max_parallel: 16", "max_parallel: 16, rate: 5, max_rate: 5"), 3,
     "clouds.engage1: rate is the old name of max_rate: give only max_rate"),
    ("zero-max-rate", GOOD.replace("max_parallel: 16", "max_parallel: 16, max_rate: 0"), 3,
     "clouds.engage1.max_rate: Input should be greater than 0"),
    ("cloud-twice", GOOD.replace("cloud: kaizen,", "cloud: engage1,"), 13, "listed twice"),
    ("pool-without-slurm", GOOD.replace("    slurm: {cpus: 4, real_memory: 7500, features: [cloud]}\n", ""), 6,
     "pools.cpu.slurm: required key is missing"),
    ("bad-placement", GOOD.replace("    partition: cloud\n", "    partition: cloud\n    placement: packed\n"), 9,
     "pools.cpu.placement: Input should be 'together' or 'spread' (got 'packed')"),
    ("bad-server-group", GOOD.replace("    partition: cloud\n", "    partition: cloud\n    server_group: affine\n"), 9,
     "pools.cpu.server_group: Input should be 'affinity', 'soft-affinity', 'anti-affinity' or 'soft-anti-affinity'"),
    ("all-or-nothing-not-bool",
     GOOD.replace("    partition: cloud\n", "    partition: cloud\n    all_or_nothing: 1\n"), 9,
     "pools.cpu.all_or_nothing: Input should be a valid boolean (got 1)"),
    ("placement-typo", GOOD.replace("    partition: cloud\n", "    partition: cloud\n    placment: spread\n"), 9,
     "pools.cpu.placment: unknown key; did you mean 'placement'?"),
    ("string-for-pools", GOOD.split("pools:")[0] + "pools: cpu\n", 5, "pools: Input should be a valid dictionary"),
]


def elastic_yaml(*, root: Path, pools: str, clouds: Mapping[str, Mapping[str, object]], scontrol: Path | str,
                 cluster: str = "itest", timeouts: Mapping[str, float] | None = None, extra: str = "") -> str:
    """A whole elastic.yaml for a test site in `root` (its log file and state dir go there).

    `clouds`: name -> options (clouds_yaml among them), written as flow mappings in this order;
    `pools`: the pools' YAML, dedented and put under `pools:`; `timeouts` override short defaults.
    """
    cloud_lines = "".join(f"  {name}: {{{', '.join(f'{key}: {value}' for key, value in options.items())}}}\n"
                          for name, options in clouds.items())
    timeouts = {"boot": 30, "delete": 10, "poll": 0.2, "lock": 5, **(timeouts or {})}
    pool_lines = textwrap.indent(textwrap.dedent(pools).rstrip("\n") + "\n", "  ")
    return (f"cluster: {cluster}\nclouds:\n{cloud_lines}pools:\n{pool_lines}"
            f"slurm: {{scontrol: {scontrol}}}\n"
            f"timeouts: {{{', '.join(f'{key}: {value:g}' for key, value in timeouts.items())}}}\n"
            f"log_file: {root / 'elastic.log'}\nstate_dir: {root / 'state'}\n{extra}")
