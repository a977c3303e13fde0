"""cloud-init user-data from a pool's Jinja2 template.

The template sees these variables (boot.py passes them):

    node        the Slurm node name, e.g. "cpu-001" (also the server's name)
    pool        the pool's name in the YAML
    cluster     the cluster name written into every server's metadata
    cloud       the name of the cloud the server boots on
    controller  the slurmctld host from the config, or None when not set
    ...         every key of the pool's `boot.user_data_vars`, at top level
                (the five names above win over a var of the same name)

Undefined variables are errors (StrictUndefined), so a typo fails the boot with the template's
file and line instead of booting a node with an empty munge key. Autoescape is off: this is YAML
or shell, not HTML. The rendered text holds secrets: never log it.
"""

from __future__ import annotations

import base64
import re
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elastic.errors import ConfigError

if TYPE_CHECKING:  # imported where a template is rendered: a suspend never pays for Jinja
    import jinja2

# Nova's API schema caps the base64-encoded user_data at 65535 characters.
NOVA_USER_DATA_LIMIT = 65535


def render_user_data(template_path: Path, context: Mapping[str, Any]) -> str:
    """Render the template (includes resolve beside it); errors are ConfigError at "file:line".

    An error message never carries a value of a template variable: user_data_vars may hold
    secrets, and the message may end up in a Slurm reason that every user can read. Syntax errors
    quote the template's own text; an undefined variable, attribute, item or include is named only
    when that name is written in the template (a name computed at render time, as in
    `{{ keys[munge_key] }}`, is a value); any other error (TypeError, KeyError, ValueError,
    LookupError...: Python quotes values in those) gives only its type.
    """
    import jinja2

    template_path = Path(template_path)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path.parent),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    try:
        return environment.get_template(template_path.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or template_path}:{exc.lineno}"
        raise ConfigError(f"template syntax error: {exc.message}", where=where) from None
    except jinja2.TemplateNotFound as exc:
        where = _where(exc, template_path, fallback=str(template_path))
        if exc.name == template_path.name:
            message = "template not found"
        elif _written(repr(exc.name), environment, where, template_path, context):
            message = f"included template {exc.name!r} not found"
        else:
            message = f"included template not found (its name is {_HIDDEN})"
        raise ConfigError(message, where=where) from None
    except jinja2.UndefinedError as exc:
        where = _where(exc, template_path)
        raise ConfigError(f"template: {_undefined_message(exc, environment, where, template_path, context)}",
                          where=where) from None
    except OSError as exc:
        raise ConfigError(f"cannot read template: {exc.strerror or type(exc).__name__}",
                          where=str(template_path)) from None
    except Exception as exc:  # noqa: BLE001 - anything a template's code raises is that template's error
        raise ConfigError(f"template error: {type(exc).__name__} (details not shown: they may quote a "
                          "variable's value)", where=_where(exc, template_path)) from None


_HIDDEN = "a value, not shown"
# How Jinja's Undefined words its messages (jinja2.runtime.Undefined._undefined_message): the
# quoted part is repr() of a variable, attribute or item name, or of a macro parameter.
_UNDEFINED_FORMS = (
    re.compile(r"(?P<name>.+) is undefined", re.DOTALL),
    re.compile(r"(?P<owner>'[^']*'|\S+ object|None|Ellipsis) has no (?P<what>attribute|element) (?P<name>.+)",
               re.DOTALL),
    re.compile(r"parameter (?P<name>.+) was not provided", re.DOTALL),
)
# Hints Jinja's filters give that hold no value.
_VALUE_FREE_HINTS = frozenset(f"No {which} item, sequence was empty." for which in ("first", "last", "random"))


def _undefined_message(exc: jinja2.UndefinedError, environment: jinja2.Environment, where: str,
                       template_path: Path, context: Mapping[str, Any]) -> str:
    """Jinja's message when the name it quotes is written in the template, else one without it."""
    message = exc.message or ""
    if message in _VALUE_FREE_HINTS:
        return message
    for form in _UNDEFINED_FORMS:
        match = form.fullmatch(message)
        if match is None:
            continue
        if _written(match["name"], environment, where, template_path, context):
            return message
        if "owner" in match.groupdict():
            return f"{match['owner']} has no such {match['what']} (its name is {_HIDDEN})"
        return f"an undefined name was used (it is {_HIDDEN})"
    return "an undefined value was used (details not shown: they may quote a variable's value)"


def _written(quoted: str, environment: jinja2.Environment, where: str, template_path: Path,
             context: Mapping[str, Any]) -> bool:
    """True when `quoted` (a repr) is a name or constant written in the failing template or the main
    one, and no variable's value: only then may a message show it."""
    if quoted in {repr(value) for value in _leaves(context)}:
        return False
    files = {template_path, Path(where.rpartition(":")[0] or where)}
    return any(quoted in _written_names(environment, path) for path in files)


def _written_names(environment: jinja2.Environment, path: Path) -> set[str]:
    """repr() of every variable name, attribute name and constant written in a template file."""
    import jinja2

    try:
        tree = environment.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, jinja2.TemplateSyntaxError):
        return set()
    names: set[str] = set()
    for node in tree.find_all((jinja2.nodes.Name, jinja2.nodes.Getattr, jinja2.nodes.Const)):
        if isinstance(node, jinja2.nodes.Name):
            names.add(repr(node.name))
        elif isinstance(node, jinja2.nodes.Getattr):
            names.add(repr(node.attr))
        elif isinstance(node, jinja2.nodes.Const):
            names.add(repr(node.value))
    return names


def _leaves(value: Any, depth: int = 0) -> Iterator[Any]:
    """Every scalar inside the context (through dicts, lists, tuples and sets)."""
    if depth > 20:
        return
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _leaves(item, depth + 1)
    elif isinstance(value, (str, bytes, int, float)) or value is None:
        yield value
    else:
        yield str(value)


def _where(exc: BaseException, template_path: Path, fallback: str | None = None) -> str:
    """file:line of the innermost template frame: Jinja rewrites tracebacks so that template code
    appears with the template's file name and line number."""
    directory = template_path.parent.resolve()
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if Path(frame.filename).parent.resolve() == directory]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno}"
    return fallback or str(template_path)


def encode_user_data(text: str, *, where: str = "") -> str:
    """Base64 for Nova's user_data; ConfigError when the result exceeds Nova's limit."""
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    if len(encoded) > NOVA_USER_DATA_LIMIT:
        raise ConfigError(f"user-data is {len(encoded)} bytes base64-encoded; Nova accepts at most "
                          f"{NOVA_USER_DATA_LIMIT}", where=where)
    return encoded
