import numpy as np
import pytest

from pipelines.cartoon import one_hot
from tasks.cartoon.schema import AttributeFileError, AttributeSchema, format_attribute_csv, parse_attribute_csv

CARTOONSET_LINES = '"eye_angle", 2, 3\n"eye_lashes", 0, 2\n"hair", 25, 111\n'


def test_parses_cartoonset_line_format():
    assert parse_attribute_csv(CARTOONSET_LINES) == [("eye_angle", 2, 3), ("eye_lashes", 0, 2), ("hair", 25, 111)]


def test_format_round_trips_exactly():
    rows = parse_attribute_csv(CARTOONSET_LINES)
    assert format_attribute_csv(rows) == CARTOONSET_LINES


def test_tolerates_crlf_and_blank_lines():
    assert parse_attribute_csv('"hair", 1, 4\r\n\r\n"glasses", 3, 12\r\n') == [("hair", 1, 4), ("glasses", 3, 12)]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no attribute lines"),
        ('"hair", 1\n', "expected 3 fields"),
        ('"hair", x, 4\n', "must be integers"),
        ('"hair", 1, 0\n', "0 variants"),
        ('"hair", 1, 4\n"hair", 2, 4\n', "listed twice"),
        (", 1, 4\n", "empty attribute name"),
    ],
)
def test_malformed_csv_is_an_error_with_a_reason(text, reason):
    with pytest.raises(AttributeFileError, match=reason):
        parse_attribute_csv(text)


def test_one_hot_layout_follows_file_order_and_counts():
    schema = AttributeSchema.consensus([parse_attribute_csv(CARTOONSET_LINES)])
    assert schema.names == ("eye_angle", "eye_lashes", "hair")
    assert schema.offsets == (0, 3, 5)
    assert schema.width == 116
    hot = one_hot([[2, 0, 25], [0, 1, 110]], schema.counts)  # the model's layout (pipelines.cartoon)
    assert hot.shape == (2, 116) and hot.dtype == np.float32
    assert np.flatnonzero(hot[0]).tolist() == [2, 3, 30]
    assert np.flatnonzero(hot[1]).tolist() == [0, 4, 115]
    assert hot.sum(axis=1).tolist() == [3.0, 3.0]


def test_cartoonset_layout_is_217_wide():
    counts = [3, 2, 2, 3, 2, 14, 4, 7, 15, 111, 5, 11, 10, 12, 7, 3, 3, 3]
    rows = [[(f"a{i}", 0, c) for i, c in enumerate(counts)]]
    schema = AttributeSchema.consensus(rows)
    assert schema.width == 217 and schema.offsets[-1] == 214
    assert AttributeSchema.from_json(schema.to_json()) == schema


def test_consensus_takes_the_majority_layout_and_validates_the_rest():
    good = parse_attribute_csv('"hair", 1, 4\n"glasses", 3, 12\n')
    odd = parse_attribute_csv('"hair", 1, 5\n"glasses", 3, 12\n')
    schema = AttributeSchema.consensus([good, good, odd])
    assert schema.counts == (4, 12)
    assert schema.indices(parse_attribute_csv('"glasses", 11, 12\n"hair", 0, 4\n')) == [0, 11]
    with pytest.raises(AttributeFileError, match="5 variants here, 4"):
        schema.indices(odd)
    with pytest.raises(AttributeFileError, match="unknown attribute 'hat'"):
        schema.indices(good + [("hat", 0, 2)])
    with pytest.raises(AttributeFileError, match="missing attribute 'glasses'"):
        schema.indices(good[:1])
    with pytest.raises(AttributeFileError, match="out of range"):
        schema.indices(parse_attribute_csv('"hair", 4, 4\n"glasses", 3, 12\n'))
    with pytest.raises(AttributeFileError, match="out of range"):
        schema.indices(parse_attribute_csv('"hair", -1, 4\n"glasses", 3, 12\n'))
