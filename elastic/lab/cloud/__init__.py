"""A local OpenStack emulator (Keystone v3, Nova v2.1, Glance v2, Neutron v2.0) on 127.0.0.1,
driven over real HTTP by the real openstacksdk and openstack CLI. See docs/lab-cloud.md."""

from elastic.lab.cloud.config import LabConfigError
from elastic.lab.cloud.lab import LabCloud

__all__ = ["LabCloud", "LabConfigError"]
