"""The import rule of the README's file map, and no import cycles between modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("graph", "nodes", "sim")
TOP_MODULES = ("__init__.py", "__main__.py", "cli.py")


def package_files() -> dict[str, Path]:
    """Return every module of the installed package by its dotted name."""
    files = {}
    for name in TOP_MODULES:
        files[module_name(Path(name))] = ROOT / name
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[module_name(path.relative_to(ROOT))] = path
    return files


def module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["mmevol", *parts])


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
            # `from mmevol.graph import runner` imports the module mmevol.graph.runner.
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


def read_rule() -> tuple[list[tuple[str, list[str]]], dict[str, set[str]]]:
    """Parse the README table: (layer, module patterns) in order, and what each may import."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Who may import whom", 1)[1]
    rows = re.findall(r"^\| (\w+) \| (.+?) \| (.+?) \|$", section, re.MULTILINE)
    assert rows, "the README's import rule table is missing"
    layers, allowed = [], {}
    for layer, modules, may in rows:
        if layer == "layer":
            continue  # the header row
        layers.append((layer, re.findall(r"`([^`]+)`", modules)))
        allowed[layer] = {layer} | {
            w.strip() for w in may.split(",") if re.fullmatch(r"\w+", w.strip())
        }
    return layers, allowed


def layer_of(name: str, layers: list[tuple[str, list[str]]]) -> str:
    """Return the layer of a module: the most specific pattern of the table that covers it."""
    path = name.removeprefix("mmevol").lstrip(".").replace(".", "/")
    candidates = []
    for layer, patterns in layers:
        for pattern in patterns:
            if pattern.endswith("/"):
                if (path + "/").startswith(pattern):
                    candidates.append((len(pattern), layer))
            elif pattern.removesuffix(".py") == (path or "__init__"):
                candidates.append((len(pattern) + 1000, layer))
    assert candidates, f"{name} belongs to no layer of the README's import rule"
    return max(candidates)[1]


def test_every_module_belongs_to_a_layer_and_the_table_is_sane():
    layers, allowed = read_rule()
    names = [layer for layer, _ in layers]
    assert len(names) == len(set(names))
    for layer, may in allowed.items():
        assert may <= set(names), f"layer {layer} names an unknown layer: {may - set(names)}"
    for name in package_files():
        layer_of(name, layers)
    # Spot checks that the table says what the README's prose says.
    assert layer_of("mmevol.graph.runtime.llm", layers) == "runtime"
    assert layer_of("mmevol.nodes.evolve", layers) == "nodes"
    assert layer_of("mmevol.graph.runner", layers) == "run"
    assert layer_of("mmevol.cli", layers) == "command"
    assert "nodes" not in allowed["runtime"] and "run" not in allowed["nodes"]


def test_every_import_follows_the_readme_rule():
    layers, allowed = read_rule()
    broken = []
    for name, targets in import_graph().items():
        mine = layer_of(name, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if theirs not in allowed[mine]:
                broken.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert not broken, "imports against the README's rule:\n" + "\n".join(broken)


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
    assert "mmevol.graph.state" in graph["mmevol.graph.runner"] or any(
        "mmevol.graph.state" in graph[m] for m in graph["mmevol.graph.runner"]
    )
    assert "mmevol.graph.runtime.llm" in graph["mmevol.cli"]  # imported inside a function
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
