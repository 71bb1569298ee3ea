"""One registry of stages: dvc.yaml is rendered from it (and equal to the committed file),
each stage's code deps cover its function's import closure as an independent finder computes
it, and the Prefect graph's edges come from it."""

import modulefinder
import sys
from pathlib import Path

import pytest
import yaml

from mmrm.pipeline.dvcfile import render
from mmrm.pipeline.params import PipelineParams
from mmrm.pipeline.registry import STAGES, instances, stage, upstream

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_dvc_yaml_is_the_registrys():
    assert (ROOT / "dvc.yaml").read_text() == render(ROOT), \
        "dvc.yaml differs from the stage registry: run `mmrm dvc-yaml` and commit it"


class MmrmFinder(modulefinder.ModuleFinder):
    """The standard library's module finder (it reads every code object, functions' bodies
    included), following mmrm's own modules only."""

    def import_hook(self, name, caller=None, fromlist=None, level=-1):
        if name == "mmrm" or name.startswith("mmrm.") or level > 0:
            return super().import_hook(name, caller, fromlist, level)
        return None


def closure_files(module: str) -> set[str]:
    finder = MmrmFinder(path=[str(ROOT), *sys.path])
    finder.import_hook(module)
    found = set()
    for name, mod in finder.modules.items():
        if name.startswith("mmrm") and mod.__file__:
            found.add(Path(mod.__file__).resolve().relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("each", STAGES, ids=lambda s: s.name)
def test_each_stages_code_deps_cover_the_import_closure_of_its_function(each):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entry = stages[each.name.replace("-", "_")]
    deps = set((entry.get("do") or entry)["deps"])
    closure = closure_files(each.run.__module__)
    assert f"mmrm/pipeline/{each.run.__module__.rsplit('.', 1)[1]}.py" in closure
    missing = closure - deps
    assert not missing, f"{each.name}: dvc.yaml misses {sorted(missing)}"
    if "mmrm/config.py" in closure:        # the shipped configs come with the loader
        assert "mmrm/configs" in deps


def test_cli_stage_choices_and_dvc_commands_are_the_registrys():
    from mmrm.cli import StageName

    assert [s.value for s in StageName] == [s.name for s in STAGES]
    commands = [(e.get("do") or e)["cmd"] for e in
                yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()]
    assert [c.split()[2] for c in commands] == [s.name for s in STAGES]


def test_the_graph_of_the_flow_waits_for_what_each_run_reads():
    params = PipelineParams.model_validate({"builtin": ["povid", "rlhfv"],
                                            "environments": ["povid", "rlhfv"],
                                            "variants": ["none", "sfc_two_stage"]})
    trains = instances(params, stage("train"))
    assert len(trains) == 4 and trains[0] == {"env": "povid", "variant": "none"}
    waits = [(s.name, a) for s, a in upstream(stage("train"), trains[0], params)]
    assert waits == [("proxy", {"env": "povid"}), ("convert", {"env": "povid"}),
                     ("convert", {"env": "rlhfv"})]      # its evaluation reads every test set
    assert len(list(upstream(stage("evaluate"), {}, params))) == 4
    assert [(s.name, a) for s, a in upstream(stage("convert"), {"env": "rlhfv"}, params)] == \
        [("benchmark", {})]
    with pytest.raises(ValueError, match="no stage 'nope'; stages: benchmark"):
        stage("nope")


def filled(template: str, params: PipelineParams, arguments: dict[str, str]) -> str:
    for key, value in params.paths.model_dump().items():
        template = template.replace(f"{{paths.{key}}}", str(value))
    for key, value in arguments.items():
        template = template.replace(f"{{{key}}}", value)
    return template


def overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def test_every_run_waits_for_every_run_that_writes_what_it_reads():
    params = PipelineParams.model_validate({"builtin": ["povid", "rlhfv", "vlfeedback"],
                                            "environments": ["povid", "rlhfv", "vlfeedback"],
                                            "variants": ["none", "sfc_two_stage"]})
    runs = [(s, a) for s in STAGES for a in instances(params, s)]
    key = lambda s, a: (s.name, tuple(sorted(a.items())))     # noqa: E731
    for each, arguments in runs:
        waited, todo = set(), [(each, arguments)]
        while todo:                                          # upstream, transitively
            for before in upstream(*todo.pop(), params):
                if key(*before) not in waited:
                    waited.add(key(*before))
                    todo.append(before)
        reads = [filled(d, params, arguments) for d in each.deps]
        for other, theirs in runs:
            writes = [filled(o, params, theirs) for o in other.outs]
            if other is not each and any(overlap(r, w) for r in reads for w in writes):
                assert key(other, theirs) in waited, \
                    f"{each.name}{arguments} reads what {other.name}{theirs} writes"
