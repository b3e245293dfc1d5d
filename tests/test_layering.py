"""The import layering, read from the source with ``ast`` (imports inside functions count too): no
circles; a method imports only the method interface, the shared components and the zoo; and those
lower layers import nothing of the orchestration above them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what a file in methods/ may import: the method interface, the shared components, the zoo
METHOD_API = {"vlpbench.config", "vlpbench.errors", "vlpbench.method", "vlpbench.registry", "vlpbench.losses",
              "vlpbench.masking", "vlpbench.momentum", "vlpbench.streams", "vlpbench.wordroles", "vlpbench.zoo"}
# the floors above them: running, evaluating, sweeping, reporting
ORCHESTRATION = {"vlpbench.pipeline", "vlpbench.experiment", "vlpbench.train", "vlpbench.launch", "vlpbench.executors", "vlpbench.sweep",
                 "vlpbench.cli", "vlpbench.report", "vlpbench.report_writer", "vlpbench.results", "vlpbench.summary",
                 "vlpbench.bench", "vlpbench.flops", "vlpbench.budget", "vlpbench.rundir", "vlpbench.runs",
                 "vlpbench.unimodal", "vlpbench.evaluation", "vlpbench.downstream", "vlpbench.distributed", "vlpbench.api"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "methods":  # installed as vlpbench.methods
        parts = ("vlpbench", *parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (``from a import b`` counts as a.b
    when a.b is a module)."""
    files = {module_name(p): p for p in [*ROOT.glob("vlpbench/**/*.py"), *ROOT.glob("methods/*.py")]}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                            for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def within(module: str, layer: set[str]) -> bool:
    return any(module == top or module.startswith(top + ".") for top in layer)


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", f"import circle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_methods_import_only_the_method_interface_components_and_zoo():
    graph = import_graph()
    for module in (m for m in graph if m.startswith("vlpbench.methods.")):
        outside = sorted(t for t in graph[module] if not within(t, METHOD_API))
        assert not outside, f"{module} imports {outside}: a method composes the zoo and shared components only"


def test_the_components_under_the_methods_import_no_orchestration():
    graph = import_graph()
    reached, todo = set(), [m for m in graph if within(m, METHOD_API)]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += graph[module]
    upward = sorted(m for m in reached if within(m, ORCHESTRATION))
    assert not upward, f"the method interface and components reach up into {upward}"


def test_reading_runs_and_results_imports_no_torch():
    """Reading a sweep's states, results and reports costs file reads, not a torch import."""
    import subprocess
    import sys
    code = ("import sys, vlpbench.runs, vlpbench.results, vlpbench.summary, vlpbench.report, vlpbench.report_writer; "
            "print(sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
