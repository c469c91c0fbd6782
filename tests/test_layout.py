"""The house rules a newcomer relies on, checked on the source: no import loop between the package's modules,
the product apart from the lab, every command with ``setup_arg_parser()`` and ``main()``, a reason at
the top of any module over 600 lines, and the constants the package shares with the native patches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "radar_gguf"
COMMANDS = ("run", "serve", "summarize", "bench", "lab.eval")
# product modules allowed to use the lab: bench fills its contexts with corpus text
PRODUCT_USES_LAB = {"bench"}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PKG.rglob("*.py")
    }


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, at module level or inside functions."""
    pkg = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            mod = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                cand = f"{mod}.{a.name}".lstrip(".")
                out.add(cand if cand in known else mod.lstrip("."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("radar_gguf"):
            out.add(node.module.removeprefix("radar_gguf").lstrip("."))
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, p, known) for n, p in mods.items()}


def test_no_import_loop():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import loop: " + " -> ".join(stack[stack.index(m) :] + [m]))
            if m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_the_product_does_not_use_the_lab():
    for n, deps in _graph().items():
        if not n.startswith("lab") and n not in PRODUCT_USES_LAB and n != "cli":
            assert not any(d.startswith("lab") for d in deps), f"{n} imports {sorted(deps)}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_parser_and_main(name):
    tree = ast.parse(_modules()[name].read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"setup_arg_parser", "main"} <= funcs


def test_long_modules_say_why():
    for n, p in _modules().items():
        lines = p.read_text().count("\n")
        if lines > 600:
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            assert "Why" in doc, f"{n} has {lines} lines and no reason at its top"


def test_the_device_thresholds_match_the_library():
    """``RadarConfig.describe()`` and the docs state the `dense_below` the library picks per device: the
    package's constants must be the patched llama.h's, or a user reads one threshold and gets another."""
    import re

    from radar_gguf.config import DENSE_BELOW_CPU, DENSE_BELOW_GPU

    patch = next((PKG.parent / "native" / "patches").glob("*Radar-segment-summaries*.patch")).read_text()
    found = dict(re.findall(r"#define LLAMA_RADAR_DENSE_BELOW_(CPU|GPU) +(\d+)", patch))
    assert found == {"CPU": str(DENSE_BELOW_CPU), "GPU": str(DENSE_BELOW_GPU)}
