"""The floors of the house (DESIGN.md, "Data flows one way"): a module imports only from its own
floor or the floors below it. Every import counts, including those inside functions, so a lazy
import cannot hide an upward dependency. A new module must be given a floor here."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the first floor whose prefix matches its dotted name.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("kdshell.errors", "kdshell.outpath", "kdshell.format", "kdshell.expr", "kdshell.output", "kdshell.progress",
              "kdshell.bugcheck_roles")),
    # Page sources: a container's bytes indexed by PFN (runs, bitmaps) or by saved virtual range.
    ("pages", ("kdshell.memory.physical", "kdshell.memory.sparse")),
    ("dumpfile", ("kdshell.dumpfile",)),
    ("memory", ("kdshell.memory",)),
    ("symbols", ("kdshell.symbols", "kdshell.disasm", "kdshell.disasm_arm64", "kdshell.arm64_text")),
    ("kernel", ("kdshell.kernel",)),
    ("stack", ("kdshell.stack",)),
    ("analysis/export", ("kdshell.view", "kdshell.analysis", "kdshell.export", "kdshell.target", "kdshell.cppexpr")),
    ("session", ("kdshell.session", "kdshell.parts", "kdshell.dispatch", "kdshell.explain", "kdshell.scripts",
                 "kdshell.script")),
    ("commands", ("kdshell.commands",)),
    ("front", ("kdshell.repl", "kdshell.cli", "kdshell.tutorial", "kdshell.completion", "kdshell.lexer",
               "kdshell.__main__", "kdshell.mcp", "kdshell.triage", "kdshell")),
]
# Siblings that must not see each other (issue 16): the kernel layer reads symbols only through
# the interface it defines (kdshell.kernel.interfaces), never kdshell.symbols itself.
FORBIDDEN = [("kdshell.kernel", "kdshell.symbols")]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "kdshell").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts).removesuffix(".__init__")] = path
    for path in sorted((REPO / "commands").glob("*.py")):
        found[("kdshell.commands." + path.stem).removesuffix(".__init__")] = path
    return found


def _floor(name: str) -> int:
    for index, (_, prefixes) in enumerate(FLOORS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} has no floor in tests/test_layers.py")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdshell"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("kdshell"))
    return out


def test_every_import_goes_down_or_sideways():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        if name == "kdshell":
            continue  # the package's lazy façade (kdshell.open) sits on top of everything
        mine = _floor(name)
        for target in _imports(path, modules):
            if target == "kdshell":
                continue
            theirs = _floor(target)
            if theirs > mine:
                upward.append(f"{name} ({FLOORS[mine][0]}) imports {target} ({FLOORS[theirs][0]})")
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(sorted(upward))


def test_forbidden_pairs():
    modules = _modules()
    bad = [f"{name} imports {target}" for name, path in modules.items() for low, high in FORBIDDEN
           if name.startswith(low) for target in _imports(path, modules) if target.startswith(high)]
    assert not bad, "\n".join(bad)


def test_engine_never_imports_commands():
    modules = _modules()
    bad = [f"{name} imports {target}" for name, path in modules.items()
           if not name.startswith("kdshell.commands") and _floor(name) < _floor("kdshell.commands")
           for target in _imports(path, modules) if target.startswith("kdshell.commands")]
    assert not bad, "\n".join(bad)
