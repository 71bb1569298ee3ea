"""Shared test set-up: quiet threads, offline hubs, tiers by folder, builders of real image
bytes, a tiny base and benchmark."""

import os
from pathlib import Path

# Must be set before torch or numpy start their thread pools (see the brief: small matmuls
# run 10-20x slower with busy-waiting OpenMP threads when anything else uses a core).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a fresh Prefect home migrates its sqlite database when a flow starts its ephemeral server:
# ~20 s on an idle 2-core machine, Prefect's default limit; more under load
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import pytest  # noqa: E402
from imagebytes import image_bytes, png_claiming_size  # noqa: E402

#: Each test folder is a tier (``-m unit`` is ``make test-fast``); a test is marked by where it
#: lies, so a new file cannot be left out of its tier.
TIERS = {"unit", "integration", "data"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in TIERS:
            item.add_marker(folder)


@pytest.fixture
def write_image(tmp_path):
    """Write a real image file under tmp_path and return its path."""
    def write(name, colour=(200, 30, 30), fmt="PNG", data=None):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if data is not None else image_bytes(colour, fmt=fmt))
        return path
    return write


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """A random (not pre-trained) tiny LLaVA directory: tokenizer, processor, weights."""
    from mmrm.synthetic.tiny_vlm import (TinyVLMConfig, build_model, build_processor,
                                         build_tokenizer, vocabulary_corpus)

    folder = tmp_path_factory.mktemp("tiny_vlm")
    config = TinyVLMConfig(hidden_size=32, vision_layers=1, text_layers=1, heads=2,
                           image_size=32, patch_size=8)
    tokenizer = build_tokenizer(vocabulary_corpus())
    build_model(tokenizer, config).save_pretrained(folder)
    build_processor(tokenizer, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """Converted pairwise files of a small built-in benchmark: {(env, split): path}."""
    from mmrm.synthetic.benchmark import convert_benchmark
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig, write_benchmark

    folder = tmp_path_factory.mktemp("bench")
    config = BenchmarkConfig(image_size=32, splits=[SplitConfig(name="train", size=24),
                                                    SplitConfig(name="test", size=12)])
    return convert_benchmark(folder, write_benchmark(folder / "raw", config))


@pytest.fixture(scope="session")
def trained_runs(tiny_vlm_dir, tiny_pairs, tmp_path_factory):
    """Two short runs on the tiny benchmark's POVID-like split, each evaluated on every test
    split: ``{"none": run_dir, "sfc_joint": run_dir}`` (the saved RM is ``run_dir/final``)."""
    from mmrm.config import TrainConfig
    from mmrm.train import train

    runs = {}
    for weighting in ("none", "sfc_joint"):
        out = tmp_path_factory.mktemp(f"run_{weighting}")
        train(TrainConfig.model_validate({
            "model": str(tiny_vlm_dir), "output_dir": str(out),
            "data": {"train": [str(tiny_pairs[("povid", "train")])],
                     "eval": {env: str(path) for (env, split), path in tiny_pairs.items()
                              if split == "test"}},
            "shortcut": {"none": {}, "sfc_joint": {"proxy": "joint", "weighting": "sfc"}}[
                weighting], "max_steps": 3, "per_device_batch_size": 8,
            "optim": {"lr": 1e-2, "warmup_ratio": 0}, "log_steps": 1}), resume=False,
            log=lambda line: None)
        runs[weighting] = out
    return runs


@pytest.fixture
def decompression_bomb() -> bytes:
    """A valid PNG whose header claims 100,000 x 100,000 pixels."""
    return png_claiming_size(100_000, 100_000)
