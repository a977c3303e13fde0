from __future__ import annotations

import time

import hostlist
import pytest
from hypothesis import given, strategies as st

from elastic import hostlists
from elastic.errors import UsageError
from elastic.hostlists import compress, expand


def test_expand_mixed_prefixes():
    """Slurm's argv form mixing prefixes expands to every node, in the order written."""
    assert expand("cpu[1-3],gpu7") == ["cpu1", "cpu2", "cpu3", "gpu7"]


def test_expand_keeps_zero_padding():
    """Zero-padded ranges keep their width across a carry (008..011)."""
    assert expand("cpu-[008-011]") == ["cpu-008", "cpu-009", "cpu-010", "cpu-011"]


def test_expand_keeps_order_and_drops_duplicates():
    """A name written twice appears once, at its first position."""
    assert expand("gpu7,cpu[2-3],cpu2,gpu7") == ["gpu7", "cpu2", "cpu3"]


def test_expand_takes_whitespace_as_separator():
    """Whitespace separates names as in Slurm's own parser, and surrounding blanks are ignored."""
    assert expand(" cpu1 cpu[2-3]\n") == ["cpu1", "cpu2", "cpu3"]


@pytest.mark.parametrize("text", ["cpu[1-", "cpu[3-1]", "cpu[a-b]", "cpu[]"])
def test_expand_rejects_malformed(text):
    """Malformed hostlists raise UsageError with one line naming the text."""
    with pytest.raises(UsageError) as caught:
        expand(text)
    message = str(caught.value)
    assert repr(text) in message and "\n" not in message


@pytest.mark.parametrize("text", ["", "   ", ",", ",,"])
def test_expand_rejects_empty(text):
    """A hostlist naming no node is a usage error, not an empty list."""
    with pytest.raises(UsageError, match="empty hostlist"):
        expand(text)


def test_compress_mixed_prefixes_and_padding():
    """Names compress to Slurm's form, keeping padding and separate prefixes."""
    assert compress(["cpu-003", "cpu-001", "gpu7", "cpu-002"]) == "cpu-[001-003],gpu7"


def test_compress_empty():
    """No names compress to the empty string."""
    assert compress([]) == ""


names = st.builds(
    lambda prefix, number, width: f"{prefix}{number:0{width}d}" if width else prefix,
    st.sampled_from(["cpu", "cpu-", "gpu", "a1b", "node-x-"]),
    st.integers(min_value=0, max_value=1200),
    st.integers(min_value=0, max_value=4),
)


@given(st.lists(names, min_size=1, max_size=40))
def test_compress_expand_round_trip(generated):
    """expand(compress(names)) gives back exactly the same set of names."""
    assert set(expand(compress(generated))) == set(generated)


@given(st.lists(names, min_size=1, max_size=40))
def test_expand_of_compress_of_expand_is_stable(generated):
    """A hostlist re-compressed from its expansion expands to the same nodes."""
    text = ",".join(generated)
    assert set(expand(compress(expand(text)))) == set(expand(text))


@pytest.mark.parametrize(("text", "expected"), [
    ("cpu-[001-004,007],gpu[1-2]-ib[0-1]", 9),
    ("cpu[1-3],gpu7", 4),
    ("a[1-2]b[3-4]c", 4),
    ("[1-2]", 2),
    ("a,,b", 2),
    (" a  b[1-3]\n", 4),
    ("a[1,1],a1", 3),
    ("cpu-[008-011]", 4),
    ("a[0-999999],b[0-999999]", 2_000_000),
])
def test_count_from_ranges(text, expected):
    """count adds, per top-level part, the product of its brackets' sizes (duplicates included)."""
    assert hostlists.count(text) == expected


@pytest.mark.parametrize("text", ["cpu[1-", "cpu]", "cpu[3-1]", "cpu[a-b]", "cpu[]", "a[[1]]", "a[1,,2]", "a[1-2-3]"])
def test_count_rejects_malformed(text):
    """A malformed hostlist is a one-line UsageError from count too, naming the text."""
    with pytest.raises(UsageError) as caught:
        hostlists.count(text)
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_limit_refuses_a_huge_hostlist_without_expanding(mocker):
    """A 241-byte hostlist naming 2.2 million nodes (python-hostlist would build them all: each part is
    under its 100,000 cap) is refused over the limit in milliseconds, python-hostlist never called."""
    text = ",".join(f"{letter}[0-99999]" for letter in "abcdefghijklmnopqrstuv")
    assert len(text) == 241
    expanding = mocker.patch("elastic.hostlists.hostlist.expand_hostlist")
    started = time.perf_counter()
    with pytest.raises(UsageError) as caught:
        expand(text, limit=10_000)
    assert time.perf_counter() - started < 0.1
    assert str(caught.value) == (f"hostlist {text[:200]!r}... (241 characters) names 2200000 nodes, "
                                 "more than the limit of 10000")
    expanding.assert_not_called()


def test_limit_allows_exactly_the_limit():
    """A hostlist writing exactly `limit` names expands; one more is refused."""
    assert len(expand("cpu-[001-004,007],gpu[1-2]-ib[0-1]", limit=9)) == 9
    with pytest.raises(UsageError, match="names 9 nodes, more than the limit of 8"):
        expand("cpu-[001-004,007],gpu[1-2]-ib[0-1]", limit=8)


def test_limit_message_cuts_a_long_hostlist():
    """The refusal quotes at most 200 characters of the hostlist (it may end up in a Slurm reason)."""
    text = ",".join(f"node{i:05d}" for i in range(100))
    with pytest.raises(UsageError) as caught:
        expand(text, limit=10)
    message = str(caught.value)
    assert "... (999 characters) names 100 nodes" in message and len(message) < 300


def test_number_too_long_for_python_is_usage_error():
    """A bound with more digits than Python's int() takes is a UsageError, not a ValueError traceback."""
    text = "a[0-" + "9" * 5000 + "]"
    with pytest.raises(UsageError):
        hostlists.count(text)
    with pytest.raises(UsageError):
        expand(text)


@pytest.mark.parametrize(("text", "bad"), [
    ("a/b", "a/b"), ("cpu[1-2],../etc[1]", "../etc1"), ("x,.", "."), ("..", ".."), ("ok,a\0b", "a\0b"),
    ("/etc/passwd", "/etc/passwd"),
])
def test_expand_refuses_names_that_are_paths(text, bad):
    """Names containing '/' or NUL, or '.' / '..', are a UsageError naming the bad name."""
    with pytest.raises(UsageError, match="bad node name") as caught:
        expand(text)
    assert repr(bad) in str(caught.value)


def test_dots_inside_names_are_fine():
    """Dots within a name (not the whole name) are allowed: only '.' and '..' are paths."""
    assert expand("node.a,..b,c..") == ["node.a", "..b", "c.."]


ranges = st.one_of(
    st.integers(0, 30).map(str),
    st.tuples(st.integers(0, 20), st.integers(0, 15), st.sampled_from([0, 2, 3])).map(
        lambda t: f"{t[0]:0{t[2]}d}-{t[0] + t[1]:0{t[2]}d}"),
)
segments = st.one_of(
    st.sampled_from(["cpu", "gpu-", "-ib", "a1b", "x", ".", "_"]),
    st.lists(ranges, min_size=1, max_size=3).map(lambda rs: "[" + ",".join(rs) + "]"),
)
parts = st.lists(segments, min_size=1, max_size=3).map("".join)


@given(st.lists(parts, min_size=1, max_size=4).map(",".join))
def test_count_equals_length_of_expansion(text):
    """For generated Slurm-form hostlists, count equals python-hostlist's expansion length (duplicates kept)."""
    assert hostlists.count(text) == len(hostlist.expand_hostlist(text, allow_duplicates=True))
    assert hostlists.count(text) >= len(hostlist.expand_hostlist(text))


@given(st.text(alphabet="a1-[],0 ", max_size=14))
def test_count_accepts_what_python_hostlist_accepts(text):
    """On arbitrary strings of hostlist characters, count fails exactly where python-hostlist does, else agrees."""
    joined = ",".join(text.split())
    try:
        expected = len(hostlist.expand_hostlist(joined, allow_duplicates=True))
    except hostlist.BadHostlist:
        with pytest.raises(UsageError):
            hostlists.count(text)
        return
    assert hostlists.count(text) == expected
