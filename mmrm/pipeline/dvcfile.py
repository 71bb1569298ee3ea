"""``dvc.yaml`` rendered from the stage registry (:mod:`mmrm.pipeline.registry`): each
stage's command, fan-out, data dependencies, params and outputs as registered, and its code
dependencies computed as the import closure of its function's module, so that a change to
any module a stage runs marks it stale (``dvc status``).

    mmrm dvc-yaml            # write dvc.yaml
    mmrm dvc-yaml --check    # exit 1 if the committed one differs
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import yaml

from mmrm.pipeline.registry import STAGES, Stage

HEADER = """\
# Rendered from the stage registry (mmrm/pipeline/registry.py) by `mmrm dvc-yaml`: edit the
# registry, not this file (a test keeps the two equal). Every stage is `mmrm stage NAME` over
# params.yaml, the same functions the Prefect flow runs; code deps are the import closure of
# each stage's function. `dvc repro` runs it; `dvc dag --md` draws it.
"""
#: Package data read through importlib.resources by a module (a module in a closure brings
#: its data along).
PACKAGE_DATA = {"mmrm.config": ("mmrm/configs",)}


def module_file(name: str) -> Path | None:
    """The source file of an importable module (a package's ``__init__.py``), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


@cache
def imported_modules(name: str) -> frozenset[str]:
    """The ``mmrm`` modules that module ``name`` imports anywhere in its source (module level
    or inside functions), with the packages each import runs (``a.b.c`` runs ``a`` and
    ``a.b`` first); ``from pkg import sub`` counts the submodule where it is one."""
    path = module_file(name)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())) if path else ():
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}")}
    mmrm = {m for m in found if m == "mmrm" or m.startswith("mmrm.")}
    return frozenset(p for m in mmrm for p in _with_parents(m) if module_file(p))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(module: str) -> set[str]:
    """Every ``mmrm`` module that running ``module`` may import, transitively."""
    seen, todo = set(), [*_with_parents(module)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(name) - seen)
    return seen


def code_deps(stage: Stage, root: Path) -> list[str]:
    """The files a stage's code lies in (its function's import closure) and the package data
    those modules read, relative to ``root`` (the project)."""
    modules = import_closure(stage.run.__module__)
    files = {module_file(m).resolve().relative_to(root.resolve()).as_posix() for m in modules}
    for module, data in PACKAGE_DATA.items():
        if module in modules:
            files |= set(data)
    return sorted(files)


def _template(text: str, stage: Stage) -> str:
    """A registry path template in dvc.yaml's syntax for this stage's fan-out."""
    text = re.sub(r"\{(paths\.\w+)\}", r"${\1}", text)
    if stage.over == ("real_datasets",):
        mapping = {"name": "${key}", "src": "${item.src}"}
    elif len(stage.over) == 1:
        mapping = {stage.arguments[0]: "${item}"}
    else:
        mapping = {arg: "${item.%s}" % arg for arg in stage.arguments}
    return re.sub(r"\{(\w+)\}", lambda m: mapping.get(m.group(1), m.group(0)), text)


def dvc_stage(stage: Stage, root: Path) -> tuple[str, dict]:
    """One stage's dvc.yaml entry (name, definition)."""
    options = " ".join(f"--{arg} {_template('{' + arg + '}', stage)}" for arg in stage.arguments)
    body = {"cmd": f"mmrm stage {stage.name} {options}".rstrip(),
            "deps": [_template(d, stage) for d in stage.deps] + code_deps(stage, root)}
    if stage.params:
        body["params"] = [_template(p, stage) for p in stage.params]
    body["outs"] = [_template(o, stage) for o in stage.outs]
    for kind in ("metrics", "plots"):
        if getattr(stage, kind):
            body[kind] = [{_template(p, stage): {"cache": False}} for p in getattr(stage, kind)]
    name = stage.name.replace("-", "_")
    if len(stage.over) == 1:
        return name, {"foreach": "${%s}" % stage.over[0], "do": body}
    if stage.over:
        return name, {"matrix": {arg: "${%s}" % field for arg, field in
                                 zip(stage.arguments, stage.over)}, **body}
    return name, body


def render(root: Path) -> str:
    """The whole ``dvc.yaml`` of the project at ``root``."""
    stages = dict(dvc_stage(stage, root) for stage in STAGES)
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)
