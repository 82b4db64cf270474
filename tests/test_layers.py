"""The package's layers only look down: no module imports from a layer above its own, not even inside a
function, and the import graph has no cycles. The layers are the README's "Layout" section."""

from __future__ import annotations

import ast
from pathlib import Path

import brainrecon

PACKAGE = Path(brainrecon.__file__).parent

# bottom to top; a module may import from its own layer and the ones below it
LAYERS = [
    ["brainrecon", "brainrecon.errors", "brainrecon.rng", "brainrecon.io", "brainrecon.config", "brainrecon.vision",
     "brainrecon.pretrained", "brainrecon.clip_image", "brainrecon.provenance"],
    ["brainrecon.data"],
    ["brainrecon.embed", "brainrecon.generate"],
    ["brainrecon.models"],
    ["brainrecon.train"],
    ["brainrecon.memory"],
    ["brainrecon.reconstruct"],
    ["brainrecon.evaluate"],
    ["brainrecon.report"],
    ["brainrecon.assets", "brainrecon.bench", "brainrecon.demo"],
    ["brainrecon.cli"],
]


def layer_of(module: str) -> int:
    """The layer of the longest listed prefix of ``module``."""
    best, found = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            # the bare package name stands for its __init__ only, not for everything under it
            if (module == name or (name != "brainrecon" and module.startswith(name + "."))) and len(name) > best:
                best, found = len(name), index
    assert found is not None, f"{module} is in no layer; add it to LAYERS and to the README's layout"
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _from_package(name: str) -> str:
    """`from brainrecon import NAME`: a module when NAME is one, else the package's own __init__."""
    is_module = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    return f"brainrecon.{name}" if is_module else "brainrecon"


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every brainrecon module ``path`` imports, at the top or inside a function, with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "brainrecon" else [_from_package(a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, node.lineno) for name in names if name == "brainrecon" or name.startswith("brainrecon.")]
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
              for module, targets in graph().items() for target, line in targets
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_between_packages_has_no_cycles():
    def unit(module: str) -> str:  # a package's modules form one node; top-level modules are their own
        parts = module.split(".")
        return ".".join(parts[:2])

    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        for target, _ in targets:
            if unit(target) != unit(module) and unit(target) != "brainrecon":
                edges.setdefault(unit(module), set()).add(unit(target))
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_layer_rule_sees_a_violation():
    # the checker itself: train importing evaluate is upward, evaluate importing train is not
    assert layer_of("brainrecon.evaluate.evaluation") > layer_of("brainrecon.train.trainer")
    assert layer_of("brainrecon.cli.main") == len(LAYERS) - 1
    assert imports_of(PACKAGE / "cli" / "main.py")  # the parser finds imports


def test_no_root_level_command_modules():
    assert not list(PACKAGE.glob("cli_*.py")), "command modules live in brainrecon/cli/"
