"""The shape of the library: no import circles, no oversized modules."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guided_diffusion", "evaluations")
MAX_LINES = 600


def _modules():
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name, path, modules):
    """The modules of `modules` that `name` imports, anywhere in the file (inside functions too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            # `from . import x` imports the module x, not (for this purpose) the package itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "guided_diffusion.attention" in graph["guided_diffusion.unet"]  # the scan sees imports
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and finds circles
    assert _cycles(graph) == []


def test_no_library_module_over_the_limit():
    too_long = {str(path.relative_to(ROOT)): n for path in _modules().values()
                if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}, f"split these by job (at most {MAX_LINES} lines each)"


def _imported_names(path):
    """Every module name `path` imports (absolute imports), anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.update([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
    return names


def _imports_scripts(path):
    return sorted(n for n in _imported_names(path) if n == "scripts" or n.startswith("scripts."))


def test_library_never_imports_scripts_and_scripts_never_import_each_other(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom scripts import demo\ndef f():\n    from scripts.image_sample import run\n")
    assert _imports_scripts(probe) == ["scripts", "scripts.demo", "scripts.image_sample",
                                       "scripts.image_sample.run"]  # the scan sees them, inside functions too
    offenders = {str(path.relative_to(ROOT)): found for path in _modules().values()
                 if (found := _imports_scripts(path))}
    offenders.update({str(path.relative_to(ROOT)): found for path in sorted((ROOT / "scripts").glob("*.py"))
                      if (found := _imports_scripts(path))})
    assert offenders == {}, "move what they share into the library"


def _style_breaks(source):
    """Where `source` leaves the house style (the ADM release's): annotated defs and Sphinx `:param` docstrings.

    Dataclass fields keep their annotations (a dataclass needs them); function signatures carry none, and
    what they would say that is not obvious (shapes, dtypes, None) goes in the docstring's prose.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
            if node.returns is not None or any(a.annotation is not None for a in every):
                found.append(f"{node.lineno}: {node.name} is annotated")
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if ":param" in (ast.get_docstring(node) or ""):
                found.append(f"{getattr(node, 'lineno', 1)}: {getattr(node, 'name', 'module')} has :param fields")
    return found


def test_one_docstring_and_signature_style():
    probe = ('def f(x: int, *, y=1):\n    pass\n\ndef g(x) -> str:\n    """Say.\n\n    :param x: what.\n    """\n'
             '\nclass C:\n    def h(self, *args: int):\n        pass\n')
    assert _style_breaks(probe) == ["1: f is annotated", "4: g is annotated", "4: g has :param fields",
                                    "11: h is annotated"]  # the scan sees them, in classes too
    assert _style_breaks("from dataclasses import dataclass\n\n@dataclass\nclass D:\n    x: int = 0\n") == []
    offenders = {str(path.relative_to(ROOT)): found for path in _modules().values()
                 if (found := _style_breaks(path.read_text()))}
    assert offenders == {}, "no type hints in signatures, prose docstrings (see guided_diffusion/)"
