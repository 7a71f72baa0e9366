import pytest

from autoseg.training.validation import summarise


def test_summary_means_leave_out_undefined_cases():
    rows = [{"case": "a", "dice": {"x": 0.5, "y": None}}, {"case": "b", "dice": {"x": 1.0, "y": 0.2}}]
    s = summarise(rows, ["x", "y"])
    assert s["mean"] == {"x": 0.75, "y": 0.2} and s["foreground_mean"] == pytest.approx(0.475) and s["n_cases"] == 2
