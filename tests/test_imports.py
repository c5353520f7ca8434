"""The house's layout: a module's layer is its folder, imports follow the layers' rule.

Each folder of the package is one layer, and the first line of its ``__init__.py`` says
what lives there and which layers it may import ("may import graph, runtime." or "imports
nothing else of mmevol."). The top-level modules (``cli.py``, ``__main__.py``,
``__init__.py``) are the command layer, which may import every layer. The README's two
tables ("Files" and "Who may import whom") are generated from those docstrings: run
``python tests/test_imports.py`` to rewrite them after adding or moving a module.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_MODULES = ("__init__.py", "__main__.py", "cli.py")
COMMAND = "command"
NOT_PACKAGE = {"tests", "bench", "examples", "checkpoints", "build", "dist"}
# Folders of the repository that are not part of the package, for the "Files" table.
OTHER_FOLDERS = {
    "tests/": "mirrors the package's folders; talks to the simulated endpoint over real HTTP",
    "tests/fixtures/": "runs made by mmevol 0.1.0 and 0.2.0, which today's code must still "
    "resume and export byte for byte",
    "bench/": "speed and memory benchmarks, with the figures measured (see `bench/README.md`)",
    "examples/": "running the shards of a run on a cluster: a Slurm array (`slurm/`) and Ray "
    "tasks (`ray/`)",
    "checkpoints/": "the default home of run folders (its contents are git-ignored)",
}


def layer_folders() -> list[str]:
    """Return the package's folders (each one layer), in the order of the README's table."""
    folders = [
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name not in NOT_PACKAGE
    ]
    order = ["graph", "nodes", "runtime", "store", "run", "outputs", "inspection", "sim"]
    return sorted(folders, key=lambda f: (order.index(f) if f in order else len(order), f))


def first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    return doc.splitlines()[0] if doc else ""


def read_rule() -> dict[str, set[str]]:
    """Return what each layer may import (itself included), read from the folders' docstrings."""
    allowed = {}
    folders = layer_folders()
    for folder in folders:
        line = first_line(ROOT / folder / "__init__.py")
        if line.endswith("imports nothing else of mmevol."):
            may: set[str] = set()
        else:
            found = re.search(r"may import ([\w, ]+)\.$", line)
            assert found, f"{folder}/__init__.py does not say what it may import: {line!r}"
            may = {w.strip() for w in found.group(1).split(",")}
        allowed[folder] = {folder} | may
    allowed[COMMAND] = {COMMAND, *folders}
    return allowed


def package_files() -> dict[str, Path]:
    """Return every module of the installed package by its dotted name."""
    files = {}
    for name in TOP_MODULES:
        files[module_name(Path(name))] = ROOT / name
    for folder in layer_folders():
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[module_name(path.relative_to(ROOT))] = path
    return files


def module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["mmevol", *parts])


def layer_of(name: str) -> str:
    """Return a module's layer: its folder, or the command layer for a top-level module."""
    parts = name.split(".")
    return (
        parts[1]
        if len(parts) > 2 or (len(parts) == 2 and parts[1] in layer_folders())
        else (COMMAND)
    )


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Return the mmevol modules a file imports, wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from mmevol.run import runner` imports the module mmevol.run.runner.
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in known else base for t in targets]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("mmevol") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = package_files()
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def test_every_folder_says_what_it_holds_and_may_import():
    allowed = read_rule()
    folders = layer_folders()
    assert {"graph", "nodes", "runtime", "store", "run", "outputs", "inspection", "sim"} <= set(
        folders
    )
    for layer, may in allowed.items():
        assert may <= set(allowed), f"layer {layer} names an unknown layer: {may - set(allowed)}"
    # What the README's prose says of the layers.
    assert "run" not in allowed["nodes"] and "store" not in allowed["nodes"]
    assert "nodes" not in allowed["runtime"] and allowed["store"] == {"store"}
    assert "sim" not in set().union(*(allowed[f] for f in folders if f != "sim"))
    assert "outputs" not in allowed["inspection"] and "outputs" not in allowed["run"]


def test_every_import_follows_the_layers_rule():
    allowed = read_rule()
    broken = []
    for name, targets in import_graph().items():
        mine = layer_of(name)
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs not in allowed[mine]:
                broken.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert not broken, "imports against the folders' rule:\n" + "\n".join(broken)


def test_the_state_schema_imports_nothing_but_itself():
    # Nodes, the runtime and every tool read the state, the items and the settings: those
    # three must not pull the rest of the package in behind them.
    schema = {"mmevol.graph.items", "mmevol.graph.state", "mmevol.graph.config"}
    graph = import_graph()
    for name in schema:
        assert graph[name] <= schema, f"{name} imports {graph[name] - schema}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a path of modules, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_round_a_loop():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_what_it_must(tmp_path):
    # The rule and cycle checks above are only as good as what they read: prove they catch
    # a function-local import, a TYPE_CHECKING import, a relative import and a loop.
    graph = import_graph()
    assert "mmevol.graph.state" in graph["mmevol.run.runner"] or any(
        "mmevol.graph.state" in graph[m] for m in graph["mmevol.run.runner"]
    )
    assert "mmevol.runtime.llm" in graph["mmevol.cli"]  # imported inside a function
    known = {"mmevol.a", "mmevol.b", "mmevol.pkg", "mmevol.pkg.c"}
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mmevol.a import X\n"
        "def f():\n    import mmevol.b\n"
        "from mmevol.pkg import c\n"
    )
    assert imports_of(probe, "mmevol.probe", known) == {"mmevol.a", "mmevol.b", "mmevol.pkg.c"}
    probe.write_text("from . import c\nfrom .c import thing\n")
    assert imports_of(probe, "mmevol.pkg.d", known) == {"mmevol.pkg.c"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # A module's layer is its folder, whatever its name says.
    assert layer_of("mmevol.store.calls") == "store"
    assert layer_of("mmevol.cli") == layer_of("mmevol") == COMMAND


def test_every_folder_is_installed():
    # pyproject.toml lists the packages setuptools maps onto mmevol: a new folder missing
    # there would work in an editable install and vanish from the wheel.
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"mmevol\.(\w+)"', text.split("packages = [", 1)[1].split("]")[0]))
    assert listed == set(layer_folders())


# -- the README's tables, generated from the docstrings ------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def files_table() -> str:
    """Return the README's "Files" table: every module with its docstring's first line."""
    rows = ["| path | what it holds |", "|---|---|"]
    for name in TOP_MODULES:
        rows.append(f"| `{name}` | {_cell(first_line(ROOT / name))} |")
    for folder in layer_folders():
        rows.append(f"| **`{folder}/`** | **{_cell(first_line(ROOT / folder / '__init__.py'))}** |")
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            rel = path.relative_to(ROOT).as_posix()
            rows.append(f"| `{rel}` | {_cell(first_line(path))} |")
    for folder, text in OTHER_FOLDERS.items():
        rows.append(f"| `{folder}` | {text} |")
    return "\n".join(rows)


def rule_table() -> str:
    """Return the README's "Who may import whom" table, read from the folders' docstrings."""
    allowed = read_rule()
    rows = ["| layer | where | may import |", "|---|---|---|"]
    for layer, may in allowed.items():
        where = f"`{layer}/`" if layer != COMMAND else " ".join(f"`{m}`" for m in TOP_MODULES)
        others = [m for m in [*layer_folders(), COMMAND] if m in may and m != layer]
        rows.append(f"| {layer} | {where} | {', '.join(others) or '(nothing else)'} |")
    return "\n".join(rows)


TABLES = {"files": files_table, "rule": rule_table}


def _block(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- generated: {name} \(python tests/test_imports.py\) -->\n)((?:(?!<!--).*\n)*)"
        r"(<!-- end -->)",
    )


def test_the_readme_tables_are_the_generated_ones():
    readme = (ROOT / "README.md").read_text()
    for name, make in TABLES.items():
        found = _block(name).search(readme)
        assert found, f"the README lacks the generated {name} table"
        assert found.group(2) == make() + "\n", (
            f"the README's {name} table is out of date: run `python tests/test_imports.py`"
        )


def write_readme_tables() -> None:
    """Rewrite the generated tables of the README in place."""
    path = ROOT / "README.md"
    text = path.read_text()
    for name, make in TABLES.items():
        table = make() + "\n"
        text, n = _block(name).subn(lambda m, t=table: m.group(1) + t + m.group(3), text)
        assert n == 1, f"the README has {n} blocks for the {name} table"
    path.write_text(text)


if __name__ == "__main__":
    write_readme_tables()
    sys.exit(0)
