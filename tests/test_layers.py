"""The import graph runs one way: worker <- alerts, dashboards <- stack <- bench, tests.

A lower layer importing a higher one drags the tooling into what a replica runs (worker),
or the tools into what the rules are built from (alerts): the house stops being easy to
see, and a change above breaks what is below. Every module of the layers is read with
``ast``; an import, or a module named in a string (``importlib.import_module``,
``python -m``), counts as an arrow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What each layer may import of the project, besides itself. dashboards read the alerts'
#: config (thresholds, record names); alerts never read the dashboards.
MAY_IMPORT = {
    "worker": set(),
    "alerts": {"worker"},
    "dashboards": {"worker", "alerts"},
    "stack": {"worker", "alerts", "dashboards"},
    "bench": {"worker", "alerts", "dashboards", "stack"},
}
PROJECT = {*MAY_IMPORT, "tests"}
_MODULE_NAME = re.compile(r"^(" + "|".join(PROJECT) + r")(\.\w+)+$")


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported(source: str, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of each project module that ``source`` imports or names as a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _MODULE_NAME.match(node.value)
            and _is_module(node.value, root)
        ):
            found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name.split(".")[0] in PROJECT]


def arrows_back_up(root: Path = ROOT) -> list[str]:
    """One line per import that runs from a layer to one it may not import."""
    bad = []
    for layer, allowed in MAY_IMPORT.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, name in imported(path.read_text(), root):
                target = name.split(".")[0]
                if target != layer and target not in allowed:
                    bad.append(
                        f"{path.relative_to(root)}:{line} imports {name}: {layer} may import "
                        f"{', '.join(sorted(allowed)) or 'nothing of the project'}"
                    )
    return bad


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    bad = arrows_back_up()
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_every_layer_is_read():
    counts = {layer: len(list((ROOT / layer).rglob("*.py"))) for layer in MAY_IMPORT}
    assert all(counts.values()), counts


def test_the_check_names_each_arrow_back_up(tmp_path):
    for package, source in {
        "worker": "import stack.prom\nNAMES = ['stack.prom']\n",
        "alerts": "from dashboards import render\n",
        "stack": "from tests.support import thing\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text(source)
    (tmp_path / "stack" / "prom.py").write_text("")
    (tmp_path / "dashboards").mkdir()
    assert arrows_back_up(tmp_path) == [
        "worker/mod.py:1 imports stack.prom: worker may import nothing of the project",
        "worker/mod.py:2 imports stack.prom: worker may import nothing of the project",
        "alerts/mod.py:1 imports dashboards: alerts may import worker",
        "stack/mod.py:1 imports tests.support: stack may import alerts, dashboards, worker",
    ]
