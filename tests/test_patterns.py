"""Layer patterns: one matcher for --layers, compare's --layers-a/-b and ModuleAdapter paths."""

import pytest

from repalign._patterns import compile_pattern, match_each

NAMES = ["text.embeddings", "text.layer.0", "text.layer.1", "vision.block.0", "vision.block.10"]


@pytest.mark.parametrize(
    ("pattern", "dotted", "expected"),
    [
        ("text.*", False, ["text.embeddings", "text.layer.0", "text.layer.1"]),  # * crosses dots
        ("text.*", True, ["text.embeddings"]),  # one component only
        ("text.**", True, ["text.embeddings", "text.layer.0", "text.layer.1"]),
        ("vision.block.?", True, ["vision.block.0"]),
        ("vision.block.[!0]*", False, ["vision.block.10"]),
        ("re:vision\\.block\\.1\\d*", False, ["vision.block.10"]),
        ("text.layer.1", False, ["text.layer.1"]),
    ],
)
def test_pattern_semantics(pattern, dotted, expected):
    regex = compile_pattern(pattern, dotted=dotted)
    assert [n for n in NAMES if regex.fullmatch(n)] == expected


def test_match_each_keeps_available_order_per_pattern():
    assert match_each(NAMES, ["vision.*", "text.layer.0"]) == [
        ["vision.block.0", "vision.block.10"],
        ["text.layer.0"],
    ]


def test_a_pattern_matching_nothing_names_the_closest_and_how_to_list():
    with pytest.raises(ValueError) as err:
        match_each(NAMES, ["text.layr.1"], where="a.nc", listing="`repalign info a.nc`")
    msg = str(err.value)
    assert "matches no layer of a.nc. Did you mean 'text.layer.1'" in msg
    assert "There are: text.embeddings" in msg and msg.endswith("`repalign info a.nc`")


def test_every_regex_is_checked_before_matching():
    with pytest.raises(ValueError, match="'re:\\[' is not a valid regex"):
        match_each(NAMES, ["nothing.here", "re:["])
