from __future__ import annotations

import base64

import pytest

from elastic.errors import ConfigError
from elastic.userdata import encode_user_data, render_user_data

CONTEXT = {"node": "cpu-001", "pool": "cpu", "cluster": "engage1", "cloud": "kaizen", "controller": "ctl",
           "munge_key_b64": "a2V5"}


def _template(tmp_path, text, name="compute.yaml.j2"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_renders_context_and_keeps_trailing_newline(tmp_path):
    """Variables from the context are filled in and the final newline survives."""
    path = _template(tmp_path, "#cloud-config\nhostname: {{ node }}\nruncmd: [[slurmd, -N, '{{ node }}', "
                               "--conf-server, '{{ controller }}']]\n")
    assert render_user_data(path, CONTEXT) == (
        "#cloud-config\nhostname: cpu-001\nruncmd: [[slurmd, -N, 'cpu-001', --conf-server, 'ctl']]\n")


def test_no_autoescape(tmp_path):
    """Shell and YAML characters pass through unescaped."""
    path = _template(tmp_path, "{{ cmd }}")
    assert render_user_data(path, {"cmd": "echo '<a & b>' > /tmp/x"}) == "echo '<a & b>' > /tmp/x"


def test_includes_resolve_beside_the_template(tmp_path):
    """{% include %} finds templates in the template's own directory."""
    _template(tmp_path, "key: {{ munge_key_b64 }}\n", name="munge.j2")
    path = _template(tmp_path, "#cloud-config\n{% include 'munge.j2' %}")
    assert render_user_data(path, CONTEXT) == "#cloud-config\nkey: a2V5\n"


def test_undefined_variable_names_file_and_line(tmp_path):
    """An undefined variable is a ConfigError at template:line naming the variable."""
    path = _template(tmp_path, "#cloud-config\nhostname: {{ node }}\nkey: {{ munge_kee }}\n")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, CONTEXT)
    assert (caught.value.where, caught.value.message) == (f"{path}:3", "template: 'munge_kee' is undefined")


def test_undefined_attribute_is_an_error(tmp_path):
    """A missing key of a var is an error too, not an empty string."""
    path = _template(tmp_path, "a\n{{ extra.missing }}\n")
    with pytest.raises(ConfigError, match=r":2: template: 'dict object' has no attribute 'missing'"):
        render_user_data(path, {"extra": {}})


def test_undefined_in_included_template_names_that_file(tmp_path):
    """An undefined variable inside an included template is reported at the included file's line."""
    included = _template(tmp_path, "ok\n\n{{ nope }}\n", name="part.j2")
    path = _template(tmp_path, "{% include 'part.j2' %}")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, CONTEXT)
    assert caught.value.where == f"{included}:3"


def test_syntax_error_names_file_and_line(tmp_path):
    """A template syntax error is a ConfigError at template:line."""
    path = _template(tmp_path, "line one\n{% if node %}\nno endif\n")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, CONTEXT)
    assert caught.value.where.startswith(f"{path}:") and "syntax error" in caught.value.message


def test_missing_template(tmp_path):
    """A template file that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="absent.j2: template not found"):
        render_user_data(tmp_path / "absent.j2", CONTEXT)


def test_missing_include_names_it(tmp_path):
    """An include of a missing file is a ConfigError naming the include."""
    path = _template(tmp_path, "{% include 'gone.j2' %}")
    with pytest.raises(ConfigError, match="included template 'gone.j2' not found"):
        render_user_data(path, CONTEXT)


def test_encode_is_base64_of_utf8():
    """The encoded text decodes back to the rendered UTF-8 text."""
    text = "#cloud-config\nfinal_message: ✓\n"
    assert base64.b64decode(encode_user_data(text)).decode("utf-8") == text


def test_encode_largest_size_under_the_limit_is_accepted():
    """The largest base64 length within Nova's 65535 (65532 characters) is accepted."""
    assert len(encode_user_data("x" * 49149)) == 65532


def test_encode_over_nova_limit():
    """Over 65535 encoded bytes is a ConfigError naming the size and the limit."""
    with pytest.raises(ConfigError, match="user-data is 65536 bytes base64-encoded; Nova accepts at most 65535"):
        encode_user_data("x" * 49152)
