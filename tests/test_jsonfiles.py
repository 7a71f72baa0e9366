"""Duplicate keys in JSON that people write (issue 15): found at any depth, warned, the last value kept."""

import json
import warnings

import pytest

from autoseg.jsonfiles import DuplicateKeyWarning, InputWarning, loads, parse


def test_parse_finds_duplicates_at_every_depth_and_keeps_the_last_value():
    data, found = parse('{"a": 1, "b": {"x": 1, "x": 2}, "a": 3, "c": [{"y": 0, "y": 0}]}')
    assert data == {"a": 3, "b": {"x": 2}, "c": [{"y": 0}]}
    assert sorted(found) == [("a", [1, 3]), ("x", [1, 2]), ("y", [0, 0])]


def test_loads_warns_once_per_duplicate_naming_the_file(tmp_path):
    with pytest.warns(DuplicateKeyWarning, match=r"dataset\.json: key 'labels' appears 2 times") as record:
        assert loads('{"labels": {"a": 1}, "labels": {"b": 2}}', "dataset.json") == {"labels": {"b": 2}}
    assert len(record) == 1 and issubclass(record[0].category, InputWarning)


def test_loads_is_silent_without_duplicates_and_raises_like_json():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loads('{"a": [1, 2], "b": {"a": 1}}', "x.json") == {"a": [1, 2], "b": {"a": 1}}
    with pytest.raises(json.JSONDecodeError):
        loads('{"a": ', "x.json")
