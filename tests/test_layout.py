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
    assert "guided_diffusion.model.attention" in graph["guided_diffusion.unet"]  # the scan sees imports
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


# ----------------------------------------------------------------------------------------------------
# The architecture: subpackages that import only downward, the release's import paths on top

# In the order they may import: each subpackage imports only itself and those before it.
LAYERS = ("runtime", "cli", "data", "model", "diffusion", "guidance", "sampling", "training", "inverse", "experiments",
          "testbeds")
RELEASE_PATHS = ("script_util", "unet", "gaussian_diffusion", "respace", "dist_util")


def _layer(module):
    """'guided_diffusion.model.unet' -> 'model'; a top-level module -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def _upward_imports(graph):
    found = []
    for name, targets in sorted(graph.items()):
        if not name.startswith("guided_diffusion.") or _layer(name) is None:
            continue
        for target in sorted(targets):
            if target.startswith("evaluations") and _layer(name) not in ("experiments", "testbeds"):
                found.append(f"{name} -> {target}")
            elif target.startswith("guided_diffusion"):
                layer = _layer(target)
                if layer is None or LAYERS.index(layer) > LAYERS.index(_layer(name)):
                    found.append(f"{name} -> {target}")
    return found


def test_subpackages_import_only_downward():
    probe = {"guided_diffusion.model.unet": {"guided_diffusion.sampling.denoiser"},
             "guided_diffusion.diffusion.process": {"guided_diffusion.script_util"},
             "guided_diffusion.sampling.run": {"guided_diffusion.model.unet"}}
    assert _upward_imports(probe) == ["guided_diffusion.diffusion.process -> guided_diffusion.script_util",
                                      "guided_diffusion.model.unet -> guided_diffusion.sampling.denoiser"]
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _upward_imports(graph) == []
    evaluation_imports = {t for name, targets in graph.items() if name.startswith("evaluations")
                          for t in targets if t.startswith("guided_diffusion")}
    assert {_layer(t) for t in evaluation_imports} <= {"runtime"}  # the evaluator stands apart from the library


def test_top_level_holds_only_the_release_import_paths():
    top = {path.stem for path in (ROOT / "guided_diffusion").glob("*.py")} - {"__init__"}
    packages = {path.parent.name for path in (ROOT / "guided_diffusion").glob("*/__init__.py")}
    assert top == set(RELEASE_PATHS)
    assert packages == set(LAYERS)
    for name in RELEASE_PATHS:  # thin: a docstring, imports and a delegating __getattr__ or wrappers
        assert len((ROOT / "guided_diffusion" / f"{name}.py").read_text().splitlines()) <= 30


def test_release_import_paths_keep_working():
    from guided_diffusion import dist_util
    from guided_diffusion.diffusion import process, respace
    from guided_diffusion.gaussian_diffusion import GaussianDiffusion, ModelMeanType, get_named_beta_schedule
    from guided_diffusion.model import unet
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps
    from guided_diffusion.runtime import distributed
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults, str2bool
    from guided_diffusion.unet import AttentionBlock, UNetModel

    assert UNetModel is unet.UNetModel and AttentionBlock is unet.AttentionBlock
    assert dist_util.setup_dist is distributed.setup_dist and space_timesteps is respace.space_timesteps
    assert ModelMeanType is process.ModelMeanType and get_named_beta_schedule(
        "linear", 10).shape == (10,) and str2bool("yes") is True
    flags = {**model_and_diffusion_defaults(), "image_size": 32, "num_channels": 32, "num_res_blocks": 1,
             "channel_mult": "1,2", "attention_resolutions": "16", "timestep_respacing": "4"}
    model, diffusion = create_model_and_diffusion(**flags)
    assert isinstance(diffusion, SpacedDiffusion) and isinstance(model, UNetModel)
    for method in ("p_mean_variance", "p_sample", "ddim_sample", "p_sample_loop", "ddim_sample_loop"):
        assert callable(getattr(diffusion, method))
        assert hasattr(GaussianDiffusion, method)
        assert not hasattr(process.GaussianDiffusion, method)  # the process itself knows no sampling
