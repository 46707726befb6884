"""The layering rules of the package, read from its source: commands are leaves, the top-level modules form no
import cycle, the parameter schema imports nothing of the project, and the nodes that run no model start
without torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dino_vla"
GENERATED = {"msg", "action"}   # rosidl's modules, installed beside the sources


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


def _imports(module: str, path: Path, project_only: bool = True) -> set[str]:
    """Every (dino_vla) module `module` imports, at the top or inside a function: lazy imports count too."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if not project_only or name == "dino_vla" or name.startswith("dino_vla.")}


def _unit(module: str) -> str | None:
    """The top-level module (dino_vla.X) a module belongs to; None for the package itself and generated code."""
    parts = module.split(".")
    return None if len(parts) < 2 or parts[1] in GENERATED else ".".join(parts[:2])


def test_nothing_but_the_cli_imports_the_commands():
    offenders = [f"{module} imports {name}" for module, path in _modules().items()
                 if not (module == "dino_vla.cli" or module.startswith("dino_vla.commands"))
                 for name in _imports(module, path)
                 if name.startswith(("dino_vla.commands", "dino_vla.cli"))]
    assert not offenders, offenders


def test_library_code_takes_no_argparse_namespace():
    offenders = [module for module, path in _modules().items()
                 if not (module == "dino_vla.cli" or module.startswith("dino_vla.commands"))
                 and "argparse" in _imports(module, path, project_only=False)]
    assert not offenders, offenders


def _top_level_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        source = _unit(module)
        if source is None:
            continue
        targets = {_unit(name) for name in _imports(module, path)} - {None, source}
        graph.setdefault(source, set()).update(targets)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_top_level_modules_import_each_other_without_cycles():
    graph = _top_level_graph()
    assert {"dino_vla.config", "dino_vla.commands", "dino_vla.evaluation", "dino_vla.dataset"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_parameter_schema_imports_nothing_of_the_project():
    assert _imports("dino_vla.config", PACKAGE / "config.py") == set()


@pytest.mark.parametrize("module", ["dino_vla.ros.localiser_node", "dino_vla.ros.pick_node", "dino_vla.ros.sim_node",
                                    "dino_vla.ros.recorder_node", "dino_vla.pick", "dino_vla.geometry",
                                    "dino_vla.dataset.format", "dino_vla.language", "dino_vla.sync", "dino_vla.config",
                                    "dino_vla.graph", "dino_vla.cli"])
def test_module_imports_without_torch(module):
    """The nodes that run no model start without torch and transformers (seconds of start-up each, and slow
    shutdown under load); so do the dataset format (a robot's recordings are data, not torch tensors) and
    the CLI's argument parsing (`--help`)."""
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} pulls in {result.stdout.strip()}"
