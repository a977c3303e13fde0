from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
