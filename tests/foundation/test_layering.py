"""The folders show the architecture: the board-side packages never import the
host, the contract imports neither side, and no package imports in a cycle.

Read from the source (every import statement, top level or inside functions),
so a lazy import cannot hide a dependency.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = {"host": "edgekit.host", "device": "edgekit.device", "calibration": "edgekit.calibration",
            "contract": "edgekit.contract", "profiles": "edgekit.profiles"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path):
    """Absolute names of every module ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # `from pkg import submodule`
                yield "%s.%s" % (target, alias.name)


def _edges():
    """{top-level package: set of edgekit top-level packages it imports}."""
    edges = {}
    for folder, pkg in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            uses = edges.setdefault(pkg, set())
            for target in _imports(path):
                for other in PACKAGES.values():
                    if other != pkg and (target == other or target.startswith(other + ".")):
                        uses.add(other)
    return edges


def test_board_side_never_imports_the_host():
    edges = _edges()
    assert "edgekit.host" not in edges["edgekit.device"]
    assert "edgekit.host" not in edges["edgekit.calibration"]


def test_contract_imports_neither_side():
    assert _edges()["edgekit.contract"] == set()


def test_no_package_cycles():
    edges = _edges()

    def reach(start):
        seen, todo = set(), list(edges.get(start, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(edges.get(n, ()))
        return seen

    cycles = sorted(p for p in edges if p in reach(p))
    assert cycles == [], "packages in an import cycle: %s" % cycles


def test_the_checker_sees_imports():
    # A checker that finds nothing would pass every test above.
    edges = _edges()
    assert "edgekit.contract" in edges["edgekit.device"]
    assert "edgekit.device" in edges["edgekit.host"]


def test_no_repeated_module_names():
    """One name, one module: a repeated file name needs a more exact one.
    Command modules under host/cli are named after their command and exempt."""
    seen = {}
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py") or path.parent.name == "cli" and path.parts[-3] == "host":
                continue
            seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    repeated = {k: v for k, v in seen.items() if len(v) > 1}
    assert repeated == {}


def test_only_the_cli_draws():
    """Library code reports through callbacks (edgekit.host.progress); rich is
    imported only by host/cli (and host/report/table.py, which builds tables
    for it to print)."""
    drawing = []
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("host/cli/") or rel == "host/report/table.py":
                continue
            if any(t == "rich" or t.startswith("rich.") for t in _imports(path)):
                drawing.append(rel)
    assert drawing == []
