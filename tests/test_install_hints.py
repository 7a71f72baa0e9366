"""The PyPI name `autoseg` belongs to another project: no message or document may tell users to
`pip install autoseg[...]`; installs from the checkout are `pip install -e '.[extra]'`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRONG = re.compile(r"pip install\s+['\"]?autoseg\[")


def test_no_file_suggests_installing_autoseg_from_pypi():
    offenders = []
    for path in [*ROOT.glob("autoseg/**/*.py"), *ROOT.glob("docs/**/*.md"), ROOT / "README.md",
                 *ROOT.glob("scripts/*"), *ROOT.glob("planners/*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}" for m in WRONG.finditer(text)]
    assert not offenders, offenders


def test_every_extra_named_in_a_hint_exists_in_pyproject():
    extras = set(re.findall(r"^(\w+) = \[", (ROOT / "pyproject.toml").read_text(), flags=re.M))
    named = set()
    for path in [*ROOT.glob("autoseg/**/*.py"), *ROOT.glob("docs/**/*.md"), ROOT / "README.md"]:
        named |= set(re.findall(r"pip install -e '\.\[(\w+)\]'", path.read_text()))
    assert named and named <= extras, named - extras
