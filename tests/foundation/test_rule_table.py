"""docs/metrics.md's "Rules and the tests that pin them" names, for each rule the gate documents, the tests that fail
when the rule breaks (issue 31). Every test it names must exist, so the table cannot rot into a list of renamed or
deleted tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TITLE = "## Rules and the tests that pin them"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows() -> list[tuple[str, list[tuple[str, str]]]]:
    """(rule, [(path, test name)]) for every row of the section's table."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert TITLE in text, f"docs/metrics.md lost its section {TITLE!r}"
    section = text.split(TITLE, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= {"-", " "} or cells[0] == "rule":
            continue
        rows.append((cells[0], TEST_ID.findall(cells[-1])))
    return rows


def _test_names(path: Path) -> set[str]:
    """Test functions of a module: top-level `test_*` functions and `test_*` methods of `Test*` classes."""
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        names |= {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return {n for n in names if n.startswith("test")}


def test_every_test_the_rule_table_names_exists() -> None:
    rows = table_rows()
    assert len(rows) >= 25, f"the rule table has {len(rows)} rows; it should map every rule of sections 5–8"
    missing = []
    for rule, tests in rows:
        assert tests, f"rule {rule!r} names no test (write `tests/...py::test_name`)"
        for path, name in tests:
            file = ROOT / path
            if not file.is_file() or name not in _test_names(file):
                missing.append(f"{path}::{name} (rule: {rule})")
    assert not missing, "tests named in docs/metrics.md that do not exist:\n" + "\n".join(missing)


def test_the_table_check_finds_a_renamed_test(tmp_path: Path) -> None:
    """The check reads test names from the module's syntax tree, not from any text in it."""
    module = tmp_path / "test_x.py"
    module.write_text('def test_real():\n    "test_ghost"\n\nclass TestA:\n    def test_method(self):\n        pass\n')
    assert _test_names(module) == {"test_real", "test_method"}
