"""The README's Python example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs() -> None:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})


def test_readme_configuration_table_lists_every_variable() -> None:
    from vesper.config import known_variables

    text = README.read_text()
    table = text.split("### Configuration reference", 1)[1].split("\n\n", 2)[1]
    for variable in known_variables():
        assert f"| `{variable.name}` |" in table, variable.name
