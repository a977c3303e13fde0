"""The one error vocabulary of elastic.

Every failure that crosses a module boundary is one of these. The cloud adapter classifies
openstacksdk exceptions into CloudError kinds once (by exception type and status code); the
power flows decide on the kind, never on message text.
"""

from __future__ import annotations

import enum


class ElasticError(Exception):
    """Base of every error elastic raises on purpose."""


class UsageError(ElasticError):
    """Bad command line: unknown node, empty hostlist, missing argument."""


class ConfigError(ElasticError):
    """The YAML config (or a file it names) is unusable.

    `where` is "file:line" (or just the file) and `key` the dotted key path, so the one-line
    message tells the admin exactly what to edit.
    """

    def __init__(self, message: str, *, where: str = "", key: str = ""):
        self.message = message
        self.where = where
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        key = f"{self.key}: " if self.key else ""
        return f"{prefix}{key}{self.message}"


class SlurmError(ElasticError):
    """An scontrol call failed or printed something we cannot parse."""


class LocalError(ElasticError):
    """A fault of this machine, not of a cloud or of Slurm: a lock file or state dir that cannot be
    opened or written, the open-file limit, a full disk. The flows fail closed on it: every node
    they were handed gets a Slurm state with an `elastic: local: ...` reason."""


class LockTimeout(LocalError):
    """Another elastic process held a node's lock for too long."""


class CloudErrorKind(str, enum.Enum):
    QUOTA = "quota"                # 403/413 quota exceeded on create
    CAPACITY = "capacity"          # server went ERROR with "No valid host", or 5xx NoValidHost
    RATE_LIMITED = "rate-limited"  # 429 / 413 overLimit
    TRANSIENT = "transient"        # 5xx, or an SDK failure we cannot place
    UNREACHABLE = "unreachable"    # no HTTP answer: connection refused/reset, or no reply in time
    AUTH = "auth"                  # 401, bad credentials, unknown cloud in clouds.yaml
    NOT_FOUND = "not-found"        # 404 on a named resource (image, flavor, network)
    CONFLICT = "conflict"          # 409
    CONFIG = "config"              # 400 bad request: our request is wrong for this cloud
    BOOT = "boot"                  # server went ERROR for a reason other than capacity


# Kinds worth another attempt on the same cloud after a pause.
RETRYABLE_KINDS = frozenset({CloudErrorKind.RATE_LIMITED, CloudErrorKind.TRANSIENT, CloudErrorKind.UNREACHABLE})
# Kinds that say "this cloud cannot take more now": try the pool's next cloud.
FALLBACK_KINDS = frozenset({CloudErrorKind.QUOTA, CloudErrorKind.CAPACITY})
# Kinds that no retry or other moment will fix: the admin must act.
PERMANENT_KINDS = frozenset({CloudErrorKind.AUTH, CloudErrorKind.NOT_FOUND, CloudErrorKind.CONFIG})


class CloudError(ElasticError):
    """A cloud call failed; `kind` is what the flows decide on.

    `resource` is what the call was about when the caller knows it, as (kind, name): ("image",
    "debian-12"), ("flavor", "m1.small"), ("network", "private"), ("keypair", "hpc"); the kinds are
    those of `openstack <kind> list`.
    """

    def __init__(
        self,
        kind: CloudErrorKind,
        message: str,
        *,
        cloud: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        final: bool = False,
        resource: tuple[str, str] | None = None,
    ):
        self.kind = kind
        # No retry in this run will help: the cloud gave no reply within api_timeout (sending again
        # costs as much again), or it is known to be down for this run.
        self.final = final
        self.message = message
        self.cloud = cloud
        self.status = status
        self.retry_after = retry_after
        self.resource = resource
        super().__init__(str(self))

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS and not self.final

    def __str__(self) -> str:
        where = f"{self.cloud}: " if self.cloud else ""
        return f"{where}{self.kind.value}: {self.message}"
