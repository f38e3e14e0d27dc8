"""Model folders that load without this project: the pipeline's code saved beside model_index.json.

diffusers resolves a `model_index.json` whose `_class_name` is `[module_file, ClassName]` by
importing `<folder>/<module_file>.py` (with `trust_remote_code=True`), as it does for a hub repo's
custom pipeline. `save_portable(pipe, out_dir)` writes that file and rewrites `_class_name`; the
folder then loads with plain diffusers anywhere:

    DiffusionPipeline.from_pretrained("models/ldm", trust_remote_code=True)

A component of a project class (the face track's `PatchAutoencoderKL`) travels the same way, as
diffusers' custom components do: its module's code goes to `<folder>/<component>/<module>.py` and
model_index.json names `[module, ClassName]`. The code saved is always the module with the project
modules it imports inlined, so it imports nothing from `pipelines`.

Inside the project, `LatentDiffusionPipeline.from_pretrained(dir)` keeps loading as the project's
own class (no code is executed from the folder): see `pipelines.outputs.LoadsAsItself`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path

from diffusers import DiffusionPipeline

CODE_FILE = "pipeline"  # <folder>/pipeline.py, diffusers' name for a custom pipeline file
PROJECT_PACKAGE = __name__.split(".")[0]


def save_portable(pipe: DiffusionPipeline, out_dir: str | Path, **save_kwargs) -> Path:
    """`pipe.save_pretrained(out_dir)` plus the pipeline's self-contained code as
    `out_dir/pipeline.py`, and each project component's as `out_dir/<component>/<module>.py`, all
    named in model_index.json. Returns the pipeline's code file."""
    cls = type(pipe)
    components = _components(pipe)
    foreign = {
        name: lib for name, (lib, _) in components.items() if lib not in ("diffusers", "transformers", PROJECT_PACKAGE)
    }
    if foreign:
        raise ValueError(
            f"{cls.__name__} cannot be saved portable: components {sorted(foreign)} come from "
            f"{sorted(set(foreign.values()))}, which a user without this project lacks"
        )
    out = Path(out_dir)
    pipe.save_pretrained(out, **save_kwargs)
    code = out / f"{CODE_FILE}.py"
    code.write_text(standalone_source(cls.__module__))
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [CODE_FILE, cls.__name__]
    for name, (lib, class_name) in components.items():
        if lib == PROJECT_PACKAGE:
            module = type(getattr(pipe, name)).__module__
            (out / name / f"{module.split('.')[-1]}.py").write_text(standalone_source(module))
            index[name] = [module.split(".")[-1], class_name]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return code


def _components(pipe: DiffusionPipeline) -> dict[str, tuple[str, str]]:
    """Component name -> (library, class) as model_index.json will record it."""
    out = {}
    for name, value in pipe.config.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        if value[0] is not None:
            out[name] = (str(value[0]).split(".")[0], str(value[1]))
    return out


def standalone_source(module_name: str) -> str:
    """The source of `module_name` with every project module it imports (recursively) inlined
    before it, and their `from pipelines... import ...` lines removed."""
    futures: list[str] = []
    parts: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        source = inspect.getsource(importlib.import_module(name))
        tree = ast.parse(source)
        drop: set[int] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                futures.extend(ast.get_source_segment(source, node).splitlines())
                drop.update(range(node.lineno, node.end_lineno + 1))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                project = [n for n in _imported_modules(node) if n.split(".")[0] == PROJECT_PACKAGE]
                if project:
                    if isinstance(node, ast.Import) or project == [PROJECT_PACKAGE]:
                        raise ValueError(
                            f"{name}: import project code as `from {PROJECT_PACKAGE}.module import "
                            f"name` so that save_portable can inline the module"
                        )
                    for dep in project:
                        add(dep)
                    drop.update(range(node.lineno, node.end_lineno + 1))
        lines = source.splitlines()
        kept = [line for i, line in enumerate(lines, start=1) if i not in drop]
        parts.append(f"# ---- from {name} " + "-" * max(0, 80 - len(name) - 13) + "\n" + "\n".join(kept).strip("\n"))

    add(module_name)
    header = (
        f'"""{module_name.split(".")[-1]}: saved by {PROJECT_PACKAGE}.portable.save_portable, '
        f'self-contained (diffusers and torch only)."""'
    )
    return "\n\n\n".join([header + "\n" + "\n".join(dict.fromkeys(futures))] + parts) + "\n"


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative imports are not used in this package
        raise ValueError("relative imports cannot be inlined")
    return [node.module]
