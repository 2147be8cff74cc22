"""The floor plan: the README's package diagram is the import contract, the top level holds only
entry points and orchestration, modules stay small, and every region kind and intervention is
dispatched on in its registry alone."""

from __future__ import annotations

import ast
import re
import tomllib

import pytest
import yaml
from conftest import CONF, REPO

from regionbench.interventions.kinds import INTERVENTIONS
from regionbench.regions.kinds import REGION_KINDS

PACKAGE = REPO / "regionbench"


def _contract_layers() -> list[list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = project["tool"]["importlinter"]["contracts"]
    return [
        [m.strip().removeprefix("regionbench.") for m in layer.split("|")]
        for layer in contract["layers"]
    ]


def _readme_layers() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- layers:", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.strip().splitlines():
        names = re.match(r"^(\S+(?: \| \S+)*)\s{2,}", line)
        assert names, f"README layer line without a description: {line!r}"
        layers.append(names.group(1).split(" | "))
    return layers


def test_the_readme_diagram_is_the_import_contract():
    assert _readme_layers() == _contract_layers()


def test_every_package_and_top_level_module_is_in_the_contract():
    listed = {m for layer in _contract_layers() for m in layer}
    present = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert present == listed


def test_the_top_level_is_small_and_modules_hold_one_concern():
    assert len(list(PACKAGE.glob("*.py"))) <= 12
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert set(long) <= {"common/cache.py"}, long


def _dispatched_strings(path) -> set[str]:
    """The strings a module compares with (`name == "freeze"`, `name in ("core", ...)`) or
    lists (tuple, list, set and dict literals: `_SIZED = ("core", ...)`, `{"core": pick}`): how
    code branches on a name. A string passed to a call (a stage's clock) is not a dispatch."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            parts = node.elts
        elif isinstance(node, ast.Dict):
            parts = [k for k in node.keys if k is not None]
        else:
            continue
        for part in parts:
            for leaf in ast.walk(part):
                if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                    found.add(leaf.value)
    return found


@pytest.mark.parametrize(
    ("registry", "home"),
    [(REGION_KINDS, "regions/kinds.py"), (INTERVENTIONS, "interventions/kinds.py")],
    ids=["region kinds", "interventions"],
)
def test_no_module_but_the_registry_branches_on_a_name(registry, home):
    strings = {
        str(p.relative_to(PACKAGE)): _dispatched_strings(p)
        for p in PACKAGE.rglob("*.py")
        if p.name != "config.py"  # the schema's defaults
    }
    for name in registry:
        where = sorted(module for module, found in strings.items() if name in found)
        assert set(where) <= {home}, f"{name!r} is compared with or listed in {where}"


@pytest.mark.parametrize(
    ("group", "registry"), [("region", REGION_KINDS), ("intervention", INTERVENTIONS)]
)
def test_every_config_file_names_a_registry_entry(group, registry):
    files = sorted((CONF / group).glob("*.yaml"))
    named = {
        f.stem: (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("name") for f in files
    }
    assert files and all(name in registry for name in named.values()), named
    assert set(registry) <= set(named.values())  # every entry can be chosen by a file


def test_no_two_test_modules_share_a_name():
    """pytest's default import mode cannot collect two test modules of one basename (the
    suite stops at a collection error before running anything)."""
    seen: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
