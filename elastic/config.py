"""The pool YAML file becomes frozen, validated objects.

`load_config(path)` is the only way in. Every error is a ConfigError naming file:line and the key
path, so an admin sees one line that says what to edit; a bad file makes no cloud or Slurm call.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from elastic import hostlists
from elastic.errors import ConfigError, UsageError

DEFAULT_CONFIG_PATH = Path("/etc/slurm/elastic.yaml")

# Server metadata keys that mark a server as ours (Nova has no metadata filter: see cloud.py).
META_CLUSTER = "elastic_cluster"
META_NODE = "elastic_node"
META_POOL = "elastic_pool"

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
# Finite only: YAML reads `.inf` and `.nan` as floats. An infinite timeout or cooldown would make a
# flow wait (or skip a cloud) forever; nan gets "should be a finite number", not a puzzling bound.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudConfig(_Model):
    """One OpenStack cloud as named in a clouds.yaml file."""

    clouds_yaml: Path
    secure_yaml: Path | None = None
    cloud: str | None = None  # entry name in clouds.yaml; defaults to this cloud's key
    region: str | None = None
    # Creates and deletes in flight at once on this cloud, per run. They wait on the network, not
    # on our CPU: 64 keeps a 1,000-node burst within seconds; the adaptive pacing (elastic.pacing)
    # slows us down when the cloud says 429/503.
    max_parallel: Annotated[int, Field(ge=1, le=256)] = 64
    api_timeout: Seconds = 60
    # A hard ceiling in requests per second for all runs on this controller together (a cloud
    # behind a strict proxy); None: the adaptive pacing alone decides.
    max_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    rate: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # the old name of max_rate; 0 = none
    # Skip this cloud for a pool this long after quota/capacity.
    cooldown: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 600
    # A cloud that gave no answer is probed by the next runs with this timeout until it answers.
    probe_timeout: Seconds = 10

    @model_validator(mode="after")
    def _one_rate_key(self) -> CloudConfig:
        if self.rate is not None and self.max_rate is not None:
            raise ValueError("rate is the old name of max_rate: give only max_rate")
        return self

    @property
    def rate_ceiling(self) -> float | None:
        """The hard ceiling of the pacing (max_rate, or the old `rate`; 0 or unset: none)."""
        if self.max_rate is not None:
            return self.max_rate
        return self.rate or None


class SlurmNode(_Model):
    """What slurm.conf's NodeName line says about every node of a pool."""

    cpus: Annotated[int, Field(ge=1)]
    real_memory: Annotated[int, Field(ge=1)]  # MB
    features: tuple[str, ...] = ()
    gres: str | None = None
    weight: Annotated[int, Field(ge=0)] | None = None
    sockets: Annotated[int, Field(ge=1)] | None = None
    cores_per_socket: Annotated[int, Field(ge=1)] | None = None
    threads_per_core: Annotated[int, Field(ge=1)] | None = None


class BootProfile(_Model):
    flavor: str
    image: str
    key_name: str | None = None
    security_groups: tuple[str, ...] = ()
    user_data: Path | None = None  # Jinja2 template, relative to the config file
    user_data_vars: dict[str, Any] = Field(default_factory=dict)
    boot_volume_size: Annotated[int, Field(ge=1)] | None = None  # GB; None boots from the image
    availability_zone: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_fits_nova(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if key.startswith("elastic_"):
                raise ValueError(f"metadata key {key!r} is reserved for elastic's own markers")
            if len(item) > 255 or len(key) > 255:
                raise ValueError(f"metadata {key!r}: Nova allows at most 255 characters")
        return value


class PoolCloud(_Model):
    """One cloud a pool may boot on, in the pool's order of preference."""

    cloud: str
    network: str
    floating_ip: str | None = None  # external network to take a floating IP from
    flavor: str | None = None  # overrides the pool's boot.flavor on this cloud
    image: str | None = None
    availability_zone: str | None = None
    max_nodes: Annotated[int, Field(ge=0)] | None = None


# How a pool places a job's nodes (see README, "Job-aware placement").
Placement = Literal["together", "spread"]
ServerGroupPolicy = Literal["affinity", "soft-affinity", "anti-affinity", "soft-anti-affinity"]


class Pool(_Model):
    nodes: str  # Slurm hostlist
    partition: str | None = None
    slurm: SlurmNode
    boot: BootProfile
    clouds: Annotated[tuple[PoolCloud, ...], Field(min_length=1)]
    # together: all of a job's nodes in one resume call go to one cloud and fall back as a whole;
    # spread: each node on its own, the pool's clouds in order.
    placement: Placement = "together"
    # A job that cannot get every node it asked for releases the servers it got and is requeued.
    all_or_nothing: StrictBool = False
    # One Nova server group per job per cloud, passed as the scheduler hint `group`.
    server_group: ServerGroupPolicy | None = None

    @field_validator("nodes")
    @classmethod
    def _nodes_is_hostlist(cls, value: str) -> str:
        try:
            hostlists.expand(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(hostlists.expand(self.nodes))

    def flavor_on(self, entry: PoolCloud) -> str:
        return entry.flavor or self.boot.flavor

    def image_on(self, entry: PoolCloud) -> str:
        return entry.image or self.boot.image


class SlurmSettings(_Model):
    # scontrol: resume sends every booted node's address with `scontrol update nodeaddr=`.
    # none: slurm.conf uses cloud_reg_addrs or cloud_dns and the node registers its own address.
    addresses: Literal["scontrol", "none"] = "scontrol"
    scontrol: Path | None = None  # absolute path; found on a default PATH otherwise


class Timeouts(_Model):
    boot: Seconds = 600  # resume waits this long for ACTIVE; keep it below ResumeTimeout
    delete: Seconds = 120  # suspend waits this long for servers to go; below SuspendTimeout
    lock: Seconds = 60  # a node lock held longer than this by another run is an error
    # Between list calls while waiting; unset: from the cloud's expected boot time and the list's
    # own duration, so a server is seen within about a second of turning ACTIVE.
    poll: Seconds | None = None


class ResumeFailPolicy(_Model):
    max_failures: Annotated[int, Field(ge=1)] = 3  # this many in `window` leaves the node DOWN
    window: Seconds = 3600


class ReconcileSettings(_Model):
    grace: Seconds = 900  # a server younger than this is never taken for an orphan


class Config(_Model):
    cluster: Name
    controller: str | None = None  # slurmctld host, passed to user-data templates
    clouds: dict[Name, CloudConfig] = Field(min_length=1)
    pools: dict[Name, Pool] = Field(min_length=1)
    slurm: SlurmSettings = SlurmSettings()
    timeouts: Timeouts = Timeouts()
    resume_fail: ResumeFailPolicy = ResumeFailPolicy()
    reconcile: ReconcileSettings = ReconcileSettings()
    log_file: Path | None = Path("/var/log/slurm/elastic.log")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: Path = Path("/var/lib/elastic")
    source: Path | None = Field(default=None, exclude=True)  # the file this came from

    @model_validator(mode="after")
    def _pool_clouds_are_configured(self) -> Config:
        for pool_name, pool in self.pools.items():
            seen: set[str] = set()
            for index, entry in enumerate(pool.clouds):
                if entry.cloud not in self.clouds:
                    raise _LocatedError(
                        ("pools", pool_name, "clouds", index, "cloud"),
                        f"unknown cloud {entry.cloud!r} (configured: {', '.join(self.clouds)})",
                    )
                if entry.cloud in seen:
                    raise _LocatedError(
                        ("pools", pool_name, "clouds", index, "cloud"),
                        f"cloud {entry.cloud!r} is listed twice for this pool",
                    )
                seen.add(entry.cloud)
        return self

    @model_validator(mode="after")
    def _pools_do_not_overlap(self) -> Config:
        owner: dict[str, str] = {}
        for pool_name, pool in self.pools.items():
            for node in pool.node_names:
                if node in owner:
                    raise _LocatedError(
                        ("pools", pool_name, "nodes"),
                        f"node {node} is also in pool {owner[node]!r}; pools must not overlap",
                    )
                owner[node] = pool_name
        return self

    _owners: tuple[Any, dict[str, str]] | None = PrivateAttr(default=None)

    @property
    def node_owners(self) -> dict[str, str]:
        """Node name -> its pool's name, expanded once per `pools` (a model_copy may replace them)."""
        if self._owners is None or self._owners[0] is not self.pools:
            self._owners = (self.pools, {node: name for name, pool in self.pools.items() for node in pool.node_names})
        return self._owners[1]

    def pool_of(self, node: str) -> str | None:
        return self.node_owners.get(node)

    def split_by_pool(self, nodes: typing.Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
        """Group nodes by pool; the second value lists nodes that are in no pool."""
        owner = self.node_owners
        by_pool: dict[str, list[str]] = {}
        unknown: list[str] = []
        for node in nodes:
            if node in owner:
                by_pool.setdefault(owner[node], []).append(node)
            else:
                unknown.append(node)
        return by_pool, unknown

    @property
    def lock_dir(self) -> Path:
        return self.state_dir / "locks"

    @property
    def history_path(self) -> Path:
        return self.state_dir / "history.json"


# Where a value sits in the YAML: keys and list indexes from the root, ("pools", "cpu", "clouds", 0).
Loc = tuple[str | int, ...]


class _LocatedError(ValueError):
    """A cross-field error that knows which key it is about (pydantic would blame the root)."""

    def __init__(self, loc: Loc, message: str):
        self.loc = loc
        self.message = message
        super().__init__(message)


def find_config_path(explicit: str | None, env: typing.Mapping[str, str]) -> Path:
    """--config, else $ELASTIC_CONFIG, else elastic.yaml beside $SLURM_CONF, else /etc/slurm."""
    if explicit:
        return Path(explicit)
    if env.get("ELASTIC_CONFIG"):
        return Path(env["ELASTIC_CONFIG"])
    if env.get("SLURM_CONF"):
        # slurmctld sets SLURM_CONF in the programs' otherwise empty environment.
        return Path(env["SLURM_CONF"]).parent / "elastic.yaml"
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", where=str(path)) from None
    data, lines = _parse_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys (cluster, clouds, pools, ...)", where=f"{path}:1")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, path, lines) from None
    return _resolve_paths(config, path, lines)


def _resolve_paths(config: Config, path: Path, lines: dict[Loc, int]) -> Config:
    """Relative paths in the file are relative to the file, not to whatever cwd Slurm gave us."""
    base = path.resolve().parent
    pools = {}
    for pool_name, pool in config.pools.items():
        template = pool.boot.user_data
        if template is not None:
            template = template if template.is_absolute() else base / template
            if not template.is_file():
                loc = ("pools", pool_name, "boot", "user_data")
                raise ConfigError(f"user-data template {template} does not exist", where=_where(path, lines, loc),
                                  key=_dotted(loc))
            pool = pool.model_copy(update={"boot": pool.boot.model_copy(update={"user_data": template})})
        pools[pool_name] = pool
    clouds = {
        name: cloud.model_copy(
            update={
                "clouds_yaml": _absolute(cloud.clouds_yaml, base),
                "secure_yaml": _absolute(cloud.secure_yaml, base) if cloud.secure_yaml else None,
            }
        )
        for name, cloud in config.clouds.items()
    }
    update: dict[str, Any] = {"pools": pools, "clouds": clouds, "source": path,
                              "state_dir": _absolute(config.state_dir, base)}
    if config.log_file is not None:
        update["log_file"] = _absolute(config.log_file, base)
    return config.model_copy(update=update)


def _absolute(value: Path, base: Path) -> Path:
    return value if value.is_absolute() else base / value


# ---- YAML with line numbers -------------------------------------------------------------------


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML keeping the 1-based line of every key path; duplicate keys are errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}", where=where) from None
    if root is None:
        raise ConfigError("the config file is empty", where=f"{path}:1")
    lines: dict[Loc, int] = {}
    data = _to_python(root, (), lines, path, yaml.SafeLoader(""))
    return data, lines


def _to_python(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path, loader: yaml.SafeLoader) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in result:
                raise ConfigError("duplicate key", where=f"{path}:{key_node.start_mark.line + 1}",
                                  key=_dotted(loc + (key,)))
            value = _to_python(value_node, loc + (key,), lines, path, loader)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            result[key] = value
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, loc + (index,), lines, path, loader) for index, item in enumerate(node.value)]
    return loader.construct_object(node)


def _where(path: Path, lines: dict[Loc, int], loc: Loc) -> str:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"{path}:{lines[loc[:end]]}"
    return str(path)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_error(exc: ValidationError, path: Path, lines: dict[Loc, int]) -> ConfigError:
    error = exc.errors(include_url=False)[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _LocatedError):
        return ConfigError(cause.message, where=_where(path, lines, cause.loc), key=_dotted(cause.loc))
    loc = tuple(error["loc"])
    return ConfigError(_describe(error, loc), where=_where(path, lines, loc), key=_dotted(loc))


def _describe(error: ErrorDetails, loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind == "string_pattern_mismatch":
        message = "names may hold letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit"
    value = error.get("input")
    if isinstance(value, (dict, list)):
        return message
    return f"{message} (got {value!r})"


def _allowed_keys(loc: Loc) -> list[str]:
    """The field names a model allows at `loc`, walking through dict and list levels."""
    model: Any = Config
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return []
            model = field.annotation
        else:
            model = _inner(model)
        model = _unwrap(model)
    model = _unwrap(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [name for name, field in model.model_fields.items() if not field.exclude]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so a field's model class shows."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else annotation
            if len(members) != 1:
                return annotation
        else:
            return annotation


def _inner(annotation: Any) -> Any:
    """The element type of dict[str, X] or tuple[X, ...]."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is dict:
        return args[1]
    if origin in (tuple, list):
        return args[0]
    return annotation


def config_from_env(explicit: str | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    return load_config(find_config_path(explicit, os.environ if env is None else env))

