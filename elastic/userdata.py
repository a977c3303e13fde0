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
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from elastic.errors import ConfigError

# Nova's API schema caps the base64-encoded user_data at 65535 characters.
NOVA_USER_DATA_LIMIT = 65535


def render_user_data(template_path: Path, context: Mapping[str, Any]) -> str:
    """Render the template (includes resolve beside it); errors are ConfigError at "file:line"."""
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
        missing = exc.name if exc.name != template_path.name else None
        message = f"included template {missing!r} not found" if missing else "template not found"
        raise ConfigError(message, where=_where(exc, template_path, fallback=str(template_path))) from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"template: {exc.message}", where=_where(exc, template_path)) from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"template error: {exc}", where=_where(exc, template_path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read template: {exc.strerror or exc}", where=str(template_path)) from None


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
