"""Shared test set-up: quiet threads, offline hubs, builders of real image bytes, loaders of
the benchmark scripts and a made-up finished sweep for them."""

import importlib.util
import io
import json
import os
import struct
import zlib
from pathlib import Path

# Must be set before torch or numpy start their thread pools (see the brief: small matmuls
# run 10-20x slower with busy-waiting OpenMP threads when anything else uses a core).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmark_script(monkeypatch):
    """Loads a script under ``benchmarks/`` as a fresh module, with its siblings importable
    as ``python benchmarks/NAME.py`` sees them: ``benchmark_script("shortcut_sweep")``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_grid(tmp_path, benchmark_script):
    """A made-up finished sweep's folder for the scripts that measure against one: the tiny
    V2 base of base seed 0, pre-trained in seconds and said to have taken ``seconds``, and
    ``finished`` (the JSON the sweep would have written): ``grid = tiny_grid(600.0, {...})``."""
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain

    def make(seconds: float, finished: dict):
        sweep = benchmark_script("shortcut_sweep")
        grid = tmp_path / "grid"
        base = sweep.base_dir(grid, "V2", 0)
        pretrain(base, TinyVLMConfig(visual="V2", hidden_size=32, vision_layers=1,
                                     text_layers=1, heads=2, align_steps=2, tune_steps=2,
                                     batch_size=4, eval_scenes=5), log=lambda line: None)
        (base / "built.json").write_text(json.dumps({"seconds": seconds}))
        (grid / "sweep.json").write_text(json.dumps(finished))
        return grid

    return make


def image_bytes(colour=(200, 30, 30), size=(8, 6), fmt="PNG") -> bytes:
    """Real encoded image bytes (PNG or JPEG) of a plain colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb that costs nothing here.

    The IHDR chunk of a real 1x1 PNG is rewritten with the claimed size and a correct CRC,
    so any reader that trusts the header would try to allocate width*height pixels.
    """
    data = bytearray(image_bytes(size=(1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


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
    from mmrm.synthetic.environments import (BenchmarkConfig, SplitConfig, convert_benchmark,
                                             write_benchmark)

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
            "shortcut": {"weighting": weighting}, "max_steps": 3, "per_device_batch_size": 8,
            "optim": {"lr": 1e-2, "warmup_ratio": 0}, "log_steps": 1}), resume=False,
            log=lambda line: None)
        runs[weighting] = out
    return runs
