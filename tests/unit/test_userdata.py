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


SECRET = "S3cr3t-Munge-Key-9f2"
SECRET_CONTEXT = {**CONTEXT, "munge_key": SECRET, "keys": {}, "pin": 48151623, "vault": {"db": {"password": SECRET}},
                  "encoding": "ascii"}
LEAKING = [
    ("concatenate", "{{ munge_key + 1 }}", "template error: TypeError"),
    ("pop-missing-key", "{{ {}.pop(munge_key) }}", "template error: KeyError"),
    ("unknown-encoding", "{{ encoding.encode(munge_key) }}", "template error: LookupError"),
    ("format-spec", '{{ "{0:{1}}".format(1, munge_key) }}', "template error: ValueError"),
    ("not-a-mapping", "{{ munge_key | dictsort }}", "template error: AttributeError"),
    ("int-filter", "{{ (munge_key | int(munge_key)) + 1 }}", "template error: TypeError"),
    ("key-by-secret", "{{ keys[munge_key] }}", "template: 'dict object' has no such attribute (its name is a value"),
    ("key-by-derived-secret", "{{ keys[munge_key | upper] }}", "template: 'dict object' has no such attribute"),
    ("key-by-nested-secret", "{{ keys[vault.db.password] }}", "template: 'dict object' has no such attribute"),
    ("attr-filter", "{{ munge_key | attr(munge_key) }}", "template: 'str object' has no such attribute"),
    ("index-by-secret-number", "{{ [1, 2][pin] }}", "template: list object has no such element"),
    ("include-by-secret", "{% include munge_key %}", "included template not found (its name is a value, not shown)"),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in LEAKING], ids=[case[0] for case in LEAKING])
def test_error_never_quotes_a_variables_value(tmp_path, text, expected):
    """Errors that Python or Jinja word with a variable's value say what failed and where, without the value."""
    path = _template(tmp_path, "#cloud-config\n" + text + "\n")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, SECRET_CONTEXT)
    error = caught.value
    for shown in (str(error), repr(error), str(error.args)):
        assert SECRET not in shown and SECRET.upper() not in shown and "48151623" not in shown
    assert error.where == f"{path}:2" and error.message.startswith(expected), str(error)
    assert error.__cause__ is None and error.__suppress_context__


def test_type_error_gives_type_file_and_line_only(tmp_path):
    """`{{ munge_key + 1 }}` gives only the exception type at file:line."""
    path = _template(tmp_path, "a: 1\nb: {{ munge_key + 1 }}\n")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, SECRET_CONTEXT)
    assert str(caught.value) == (f"{path}:2: template error: TypeError (details not shown: they may quote a "
                                 "variable's value)")


def test_error_in_included_template_hides_value_and_names_that_file(tmp_path):
    """A value-quoting error inside an include is reported at the included file's line, without the value."""
    included = _template(tmp_path, "ok\n{{ {}.pop(munge_key) }}\n", name="part.j2")
    path = _template(tmp_path, "{% include 'part.j2' %}")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, SECRET_CONTEXT)
    assert caught.value.where == f"{included}:2" and SECRET not in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("{{ keys['missing'] }}", "template: 'dict object' has no attribute 'missing'"),
    ("{{ keys.missing }}", "template: 'dict object' has no attribute 'missing'"),
    ("{{ [1, 2][5] }}", "template: list object has no element 5"),
    ("{% macro m(param) %}{{ param }}{% endmacro %}{{ m() }}", "template: parameter 'param' was not provided"),
    ("{{ munge_kee }}", "template: 'munge_kee' is undefined"),
    ("{{ [] | first + 1 }}", "template: No first item, sequence was empty."),
])
def test_names_written_in_the_template_are_still_shown(tmp_path, text, expected):
    """Undefined names, attributes and items written in the template are named, so the admin knows what to fix."""
    path = _template(tmp_path, "x\n" + text + "\n")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, SECRET_CONTEXT)
    assert (caught.value.where, caught.value.message) == (f"{path}:2", expected)


def test_written_name_equal_to_a_value_is_hidden(tmp_path):
    """A name written in the template is still hidden when some variable holds it as its value."""
    path = _template(tmp_path, "{{ keys.hunter2 }}\n")
    with pytest.raises(ConfigError) as caught:
        render_user_data(path, {**SECRET_CONTEXT, "password": "hunter2"})
    assert "hunter2" not in str(caught.value) and "has no such attribute" in str(caught.value)


def test_recursion_is_a_config_error(tmp_path):
    """Any exception a template raises (here RecursionError) is a ConfigError with its type, not a traceback."""
    path = _template(tmp_path, "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}")
    with pytest.raises(ConfigError, match="template error: RecursionError"):
        render_user_data(path, CONTEXT)
