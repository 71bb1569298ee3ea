"""The champion policy on a real (sqlite) MLflow registry: a model becomes @champion only by
beating the champion on the same evaluation; a tiny run cannot take over."""

import mlflow
import pytest

from mmrm.tracking.registry import CANDIDATE, CHAMPION, evaluation_key, promote

NAME = "rm"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)

    def register(folder):
        (tmp_path / folder).mkdir()
        version = client.create_model_version(NAME, str(tmp_path / folder))
        client.set_model_version_tag(NAME, version.version, "mmrm.model_dir",
                                     str((tmp_path / folder).resolve()))
        return tmp_path / folder
    yield client, register
    mlflow.set_tracking_uri(None)


def alias_of(client, model_dir):
    versions = [v for v in client.search_model_versions(f"name='{NAME}'")
                if v.tags["mmrm.model_dir"] == str(model_dir.resolve())]
    return client.get_model_version(NAME, versions[0].version).aliases


def test_only_a_better_model_on_the_same_evaluation_takes_the_champion(registry, tmp_path):
    client, register = registry
    tests = {}
    for env in ("povid", "rlhfv"):
        tests[env] = tmp_path / f"{env}.jsonl"
        tests[env].write_text("a\nb\nc\n")
    full = evaluation_key(tests)
    tiny = evaluation_key({"povid": tests["povid"]})           # fewer test sets
    assert full != tiny and full == evaluation_key(dict(tests))

    first = register("first")
    assert promote(NAME, first, 0.80, full)["alias"] == CHAMPION
    worse = register("worse")
    decision = promote(NAME, worse, 0.70, full)
    assert (decision["alias"], decision["champion_ood_mean"]) == (CANDIDATE, 0.80)
    tiny_run = register("tiny")                 # a 5-step run on other test sets, OOD 0.95
    decision = promote(NAME, tiny_run, 0.95, tiny)
    assert decision["alias"] == CANDIDATE and "other test sets" in decision["why"]
    assert CHAMPION in alias_of(client, first)
    better = register("better")
    assert promote(NAME, better, 0.85, full)["alias"] == CHAMPION
    assert CHAMPION in alias_of(client, better) and CHAMPION not in alias_of(client, first)
    version = client.get_model_version_by_alias(NAME, CHAMPION)
    assert version.tags["mmrm.ood_mean"] == "0.850000" and version.tags["mmrm.eval_key"] == full
    assert version.tags["mmrm.decision"].startswith("champion: a higher mean OOD")


def test_logging_data_and_registering_a_model_leave_no_mlflow_warnings(registry, tmp_path):
    """What the pipeline logs to MLflow for every run: a data file as an input, a saved RM as
    a registered pyfunc. MLflow's nags (a local path that two sources match, no input
    example, no type hint on predict) are answered or explained, not printed to the user."""
    import warnings

    from mmrm.tracking.registry import register_reward_model
    from mmrm.tracking.tracker import MLflowTracker

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"id": "1"}\n')
    model_dir = tmp_path / "rm"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run():
        warnings.simplefilter("always")
        MLflowTracker().log_dataset(data, name="pairs", context="train")
        register_reward_model(model_dir, NAME, {"ood": 0.5})
    assert [str(w.message)[:80] for w in caught if "mlflow" in w.filename] == []
