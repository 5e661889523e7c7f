"""The package's shape: no import cycles, and the CLI is a leaf that only entry points import."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dogbreed"
ENTRY_POINTS = {"dogbreed.__main__", "dogbreed.sagemaker"}  # python -m dogbreed, SageMaker's entry script


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in the file (a lazy import is a cycle
    waiting to happen too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


def test_nothing_but_the_entry_points_imports_the_cli():
    assert {m for m in MODULES if "dogbreed.cli" in _imports(m)} == ENTRY_POINTS


def test_the_runtime_imports_nothing_else_of_dogbreed():
    """It ships verbatim in every artifact, where dogbreed is not installed."""
    for name in MODULES:
        if name.startswith("dogbreed.runtime"):
            assert all(t.startswith("dogbreed.runtime") for t in _imports(name)), name


def test_the_mlflow_flavor_imports_nothing_of_dogbreed():
    """MLflow runs it as the model's code, where dogbreed need not be installed."""
    assert _imports("dogbreed.pyfunc_model") == set()


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for t in sorted(graph[m]):
            assert state.get(t) != "open", "import cycle: " + " -> ".join(path[path.index(t):] + [t])
            if t not in state:
                visit(t)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
