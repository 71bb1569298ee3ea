"""The shape of the house, read from the source with ast: leaves stay leaves, the engines
stay at the edges, one way in to a saved reward model, functions stay short (the training
recipe included: setup / step / finish)."""

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[2] / "mmrm"
#: What every other module may build on.
CORE = {"model", "data", "weighting", "formats", "ledger", "images", "config"}
#: The only modules that may import an engine (Ray, MLflow, Prefect).
ADAPTERS = {"score", "serve", "cluster", "tracking", "pipeline", "cli"}
ENGINES = {"ray", "mlflow", "prefect"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        yield name.removesuffix(".__init__"), ast.parse(path.read_text()), path


def imports(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def mmrm_modules(tree) -> set[str]:
    return {m.split(".", 1)[1] for m in imports(tree) if m.startswith("mmrm.")}


@pytest.mark.parametrize("leaf", ["config", "tracking", "tracking.tracker"])
def test_leaves_import_nothing_above_the_core(leaf):
    [tree] = [t for name, t, _ in modules() if name == leaf]
    above = {m for m in mmrm_modules(tree) if m.split(".")[0] not in CORE
             and m != "tracking.tracker"}      # the tracking package: its one leaf module
    assert not above, f"mmrm.{leaf} imports {above}"


def test_config_is_a_true_leaf():
    [tree] = [t for name, t, _ in modules() if name == "config"]
    assert not mmrm_modules(tree)


def test_only_the_adapters_import_ray_mlflow_or_prefect():
    offenders = {name: sorted(m for m in imports(tree) if m.split(".")[0] in ENGINES)
                 for name, tree, _ in modules() if name.split(".")[0] not in ADAPTERS}
    assert not {k: v for k, v in offenders.items() if v}


def test_one_way_in_to_a_saved_reward_model():
    """``reward_config.json`` and ``set_right_padding`` appear only in the core."""
    for name, _, path in modules():
        text = path.read_text()
        if name not in ("model", "data", "inference"):
            assert "reward_config.json" not in text.replace('"reward_config.json" as', ""), name
            assert "set_right_padding" not in text, name


def test_no_function_over_60_lines():
    long = [(name, node.name, node.end_lineno - node.lineno + 1)
            for name, tree, _ in modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long


def test_nothing_reads_the_environment_or_the_repository_at_import_time():
    for name, tree, path in modules():
        for node in tree.body:      # module level statements only
            text = ast.get_source_segment(path.read_text(), node) or ""
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)):
                assert "os.environ" not in text and "getenv" not in text, (name, text)
                assert "parents[" not in text, (name, text)
