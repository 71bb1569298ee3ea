"""The ``mmrm`` command: thin wrappers over the library's functions."""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, Optional, get_args, get_origin

import typer

from mmrm.config import ScoreConfig, ServeConfig
from mmrm.convert import FORMATS, convert as run_convert
from mmrm.formats import (ImageCheck, ImageRules, InferenceRecord, MultiRecord, PairRecord,
                          read_records)
from mmrm.images import DEFAULT_MAX_PIXELS
from mmrm.ledger import Ledger, OnError, RecordError
from mmrm.outputs import refuse_overwriting_inputs

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Shortcut-aware multimodal reward models: data, training, evaluation.")


def _named_metavar_only(self, ctx):
    """An argument with a metavar shows just that (typer would add ``<list[str]>``)."""
    return None if self.metavar else self.display_type(ctx)


typer.core.TyperArgument.display_type_rich = _named_metavar_only


def _version(value: bool) -> None:
    if value:
        from mmrm import __version__

        typer.echo(f"mmrm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
        = False) -> None:
    """Shortcut-aware multimodal reward models: data, training, evaluation."""
    _terminate_cleanly()


def _terminate_cleanly() -> None:
    """SIGTERM ends a command as SIGINT does, by unwinding: every ``with`` block that
    stages a file or a folder removes its staging and leaves the previous one in place, the
    locks are released, and the exit code says it (143), never 0."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


def _stage_names() -> list[str]:
    from mmrm.pipeline.registry import STAGES

    return [stage.name for stage in STAGES]


#: The pipeline's stages, from its registry (mmrm.pipeline.registry).
StageName = Enum("StageName", {n: n for n in _stage_names()}, type=str)


SourceFormat = Enum("SourceFormat", {name: name for name in FORMATS}, type=str)
_FORMAT_LINES = "\n".join(f"  {name:<14} {fmt.description}" for name, fmt in FORMATS.items())


class RecordKind(str, Enum):
    pairs = "pairs"
    multi = "multi"
    inference = "inference"


_RECORD_TYPES = {RecordKind.pairs: PairRecord, RecordKind.multi: MultiRecord,
                 RecordKind.inference: InferenceRecord}

OnErrorOption = Annotated[OnError, typer.Option(
    "--on-error", help="raise: stop at the first bad record with file:line: field: problem; "
                       "skip: count it by reason and go on.")]
ImageRootOption = Annotated[Optional[Path], typer.Option(
    "--image-root", help="Folder the records' image paths are relative to (default: the "
                         "source file's folder). Every image, absolute paths included, must "
                         "lie inside it; --image-root / allows any path.")]
TrustOption = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Run model code shipped in the model folder (only for a folder "
                                "you trust; a folder cannot turn this on by itself).")]
MaxPixelsOption = Annotated[int, typer.Option(
    "--max-image-pixels", help="Refuse images whose width*height exceeds this "
                               "(decompression-bomb guard).")]


@app.command(help="Convert a released preference data set to pairwise JSONL + images/.\n\n"
                  "\b\nFormats:\n" + _FORMAT_LINES + "\n\n"
                  "OUT is the pairwise JSONL to write; images go to images/ beside it, named "
                  "by content hash, and a manifest (counts read/written/skipped, sha256 of the "
                  "outputs) to OUT's stem + .manifest.json.")
def convert(
    src: Annotated[Path, typer.Argument(
        metavar="SRC", help="The released file (or folder of parquet shards).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The pairwise JSONL to write.")],
    format: Annotated[SourceFormat, typer.Option("--format", "-f", help="Source format.")],
    on_error: OnErrorOption = OnError.RAISE,
    image_root: ImageRootOption = None,
    max_image_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
) -> None:
    with _user_errors():
        manifest = run_convert(format.value, src, out, on_error=on_error,
                               image_root=image_root, max_pixels=max_image_pixels)
    _report(manifest, out)


def _report(manifest: dict, out: Path) -> None:
    records = manifest["records"]
    line = (f"{manifest['format']}: read {records['read']} records, wrote "
            f"{manifest['output']['pairs']} pairs to {out}, skipped {records['skipped']}")
    typer.echo(line)
    for label, ledger in (("records", records), ("pairs", manifest.get("pairs"))):
        if ledger and ledger["skipped"]:
            reasons = ", ".join(f"{k}={v}" for k, v in ledger["skipped_by_reason"].items())
            typer.echo(f"  skipped {label}: {reasons}")
            for example in ledger["examples"][:3]:
                typer.echo(f"    e.g. {example}")


@app.command(help="Validate a JSONL file of mmrm records (pairs, multi or inference) and "
                  "report every problem with file:line: field: problem. A converted file's "
                  "manifest beside it is checked too: the file's and every image's sha256 "
                  "(an image changed or torn on disk is named; a second `mmrm convert` "
                  "repairs it).")
def validate(
    path: Annotated[Path, typer.Argument(help="The JSONL file.")],
    kind: Annotated[RecordKind, typer.Option("--kind", help="Record format.")] = RecordKind.pairs,
    on_error: OnErrorOption = OnError.SKIP,
    image_root: ImageRootOption = None,
    images: Annotated[ImageCheck, typer.Option(
        "--images", help="none: path only; exists; header: identify and size-check; "
                         "decode: decode fully.")] = ImageCheck.HEADER,
    max_image_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
) -> None:
    ledger = Ledger(on_error=on_error)
    rules = ImageRules(root=image_root, check=images, max_pixels=max_image_pixels)
    try:
        for _ in read_records(path, _RECORD_TYPES[kind], images=rules, ledger=ledger):
            ledger.written += 1
    except (RecordError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    from mmrm.convert.sink import check_manifest

    changed = check_manifest(path)
    typer.echo(json.dumps({"file": str(path), "kind": kind.value, **ledger.as_dict(),
                           **({"manifest": changed} if changed is not None else {})},
                          indent=2))
    if ledger.skipped or (changed and changed["problems"]):
        raise typer.Exit(code=1)


@app.command(help="Write a small sample of every released format under DIR/raw/ and convert "
                  "each to DIR/converted/<format>/pairs.jsonl.")
def sample(
    folder: Annotated[Path, typer.Argument(help="Where to write.")] = Path("data/sample"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    count: Annotated[int, typer.Option(help="Items per format.")] = 8,
) -> None:
    from mmrm.synthetic.sample import convert_sample

    for fmt, manifest in convert_sample(folder, seed, count).items():
        _report(manifest, folder / "converted" / fmt / "pairs.jsonl")


benchmark_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                            help="The built-in synthetic shortcut benchmark.")
base_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="The built-in tiny base VLM.")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(base_app, name="base")


@benchmark_app.command("make", help="Write the three environments (POVID-, RLHF-V- and "
                                    "VLFeedback-like) in their released formats under "
                                    "OUT/raw/ and convert them to OUT/pairs/<env>/<split>.jsonl.")
def benchmark_make(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder.")],
    config: Annotated[Optional[Path], typer.Option(help="YAML BenchmarkConfig.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the config's seed.")] = None,
    raw_only: Annotated[bool, typer.Option(help="Write the released formats only.")] = False,
) -> None:
    from mmrm.synthetic.benchmark import convert_benchmark
    from mmrm.synthetic.environments import BenchmarkConfig, write_benchmark

    cfg = _config_with_seed(BenchmarkConfig, config, seed)
    written = write_benchmark(out / "raw", cfg)
    typer.echo(f"wrote {len(written)} splits under {out / 'raw'}")
    if not raw_only:
        for (env, split), path in convert_benchmark(out, written).items():
            lines = sum(1 for _ in open(path))
            typer.echo(f"  {env}/{split}: {lines} pairs -> {path}")


@base_app.command("pretrain", help="Build the tiny LLaVA-architecture base (tokenizer trained "
                                   "here, processor, weights) and pre-train it on synthetic "
                                   "scenes: stage-1 alignment, then instruction tuning.")
def base_pretrain(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Model directory to write.")],
    config: Annotated[Optional[Path], typer.Option(help="YAML TinyVLMConfig.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the config's seed.")] = None,
) -> None:
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain

    cfg = _config_with_seed(TinyVLMConfig, config, seed)
    report = pretrain(out, cfg, log=typer.echo)
    typer.echo(json.dumps(report["grounding"]))


@app.command(help="Train a reward model from a YAML config; OVERRIDES are dotted key=value "
                  "pairs (optim.lr=1e-4 shortcut.weighting=sfc_joint).")
def train(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML TrainConfig.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="Continue from the newest checkpoint in output_dir, or "
                                     "ignore checkpoints.")] = True,
) -> None:
    from mmrm.config import load_config
    from mmrm.train import train as run_train

    cfg = _load_or_exit(load_config, config, overrides or [])
    with _user_errors():
        result = run_train(cfg, log=typer.echo, resume=resume)
    typer.echo(json.dumps(result, indent=2))


@app.command("train-proxy", help="Train the text-only shortcut proxy of a config (its data, "
                                 "mode text_only, no weighting) and cache its per-pair losses "
                                 "for sfc_two_stage in OUTPUT_DIR/proxy_losses.json.")
def train_proxy(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML TrainConfig.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...")] = None,
) -> None:
    from mmrm.config import load_config
    from mmrm.proxy import train_text_proxy

    cfg = _load_or_exit(load_config, config, overrides or [])
    with _user_errors():
        cache = train_text_proxy(cfg, log=typer.echo)
    typer.echo(f"proxy accuracy on its training data: {cache['accuracy']:.4f}")


@app.command(help="Average two reward models fine-tuned from one base, weight by weight: "
                  "(1 - ALPHA) A + ALPHA B (WiSE-FT). A and B must be one architecture from "
                  "one base (refused otherwise). OUT is an ordinary saved reward model; its "
                  "reward statistics come from A's training pairs where they can be read.")
def interpolate(
    a: Annotated[Path, typer.Argument(metavar="A", help="Saved reward model (alpha 0).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Saved reward model (alpha 1).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write (replaced "
                                        "whole if it exists).")],
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="B's share.")] = 0.5,
    calibration_pairs: Annotated[int, typer.Option(min=0, help="A's training pairs scored "
                                                   "for the reward mean/std (0: A's and B's "
                                                   "interpolated).")] = 1000,
) -> None:
    from mmrm.interpolate import Interpolation, save_interpolated
    from mmrm.outputs import refuse_overwriting_inputs

    with _user_errors():
        refuse_overwriting_inputs([a, b], {"OUT": out})
        for model in (a, b):
            if out.resolve() in model.resolve().parents:
                raise ValueError(f"{out} (OUT): holds the input {model}: choose another OUT")
        mix = Interpolation(a, b)
        pairs = _training_pairs_of(a)[:calibration_pairs] if calibration_pairs else []
        save_interpolated(mix, alpha, out, pairs)
    typer.echo(f"wrote {out} ({1 - alpha:g} x {a} + {alpha:g} x {b}"
               + (f"; reward statistics from {len(pairs)} of A's training pairs)" if pairs
                  else "; reward statistics interpolated)"))


def _training_pairs_of(model: Path) -> list:
    """The training pairs a saved reward model's ``train_config.json`` names, where they
    can still be read (else none)."""
    from mmrm.data import load_pairs

    try:
        config = json.loads((model / "train_config.json").read_text())
        return [p for path in config["data"]["train"] for p in load_pairs(path)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _keys_help(cls, options: set[str]) -> str:
    """A command's epilog: the keys of its config class that KEY=VALUE sets (those without
    an option of their own), each with its default, choices and description, read from the
    class so they are written once."""
    lines = ["\b", "KEY=VALUE keys (key=default <choices>  what it sets):"]
    for name, field in cls.model_fields.items():
        if name in options or field.is_required():
            continue
        default = field.default
        shown = json.dumps(default) if default is None or isinstance(default, bool) else default
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
        lines.append(f"  {name}={shown}" + (f" <{'|'.join(choices)}>" if choices else "") +
                     (f"  {field.description}" if field.description else ""))
    return "\n".join(lines)


_SCORE_OPTIONS = {"errors", "on_error", "image_root", "trust_remote_code"}


@app.command(help="Score every response of an inference file with a saved reward model, on "
                  "Ray workers: one output line per input item, in input order, with `scores` "
                  "and `best`. Rerunning with the same OUTPUT resumes where it stopped. "
                  "KEY=VALUE sets the run (workers=8 gpus_per_worker=1 normalize=true; the "
                  "keys below).", epilog=_keys_help(ScoreConfig, _SCORE_OPTIONS))
def score(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Saved RM directory.")],
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="Inference JSONL: prompt, "
                                          "img_path, responses, optional id.")],
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="JSONL to write.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        metavar="[KEY=VALUE]...", help="ScoreConfig keys (below).")] = None,
    errors: Annotated[Optional[Path], typer.Option(
        help="Bad items file (default OUTPUT stem + .errors.jsonl).")] = None,
    on_error: OnErrorOption = OnError.RAISE,
    image_root: ImageRootOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    from mmrm.config import apply_overrides, validate
    from mmrm.score import score_file

    with _user_errors():
        raw = dict(model=str(model), input=str(input), output=str(output),
                   errors=str(errors) if errors else None, on_error=on_error.value,
                   image_root=str(image_root) if image_root else None,
                   trust_remote_code=trust_remote_code)
        config = validate(ScoreConfig, apply_overrides(raw, overrides or []), "mmrm score")
        totals = score_file(config, show_bar=True)
    if totals.get("already_complete"):
        typer.echo(f"{output} is already complete ({totals['items_written']} items)")
        return
    typer.echo(f"scored {totals['items_scored']} items ({totals['responses']} responses) in "
               f"{totals['seconds']} s (workers busy {totals['workers_busy']:.0%} of it); "
               f"{totals['items_failed']} bad items -> "
               f"{config.errors_path}; lines read {totals['ledger']['read']} = written "
               f"{totals['ledger']['written']} + skipped {totals['ledger']['skipped']}")


_SERVE_OPTIONS = {"port", "image_root"}


@app.command(help="Serve a reward model over HTTP (replicas on Ray Serve), for RL loops: "
                  "POST /score (mmrm's items, images as base64 or paths under --image-root), "
                  "POST /get_reward (OpenRLHF's remote reward model: queries in the policy's "
                  "chat template, images optional), GET /health, /info, /metrics. Listens on "
                  "127.0.0.1 unless host= says otherwise (then token_file= is required). "
                  "KEY=VALUE sets the server (replicas=8 gpus_per_replica=1 "
                  "images_from=prompts.jsonl max_tokens=2048; the keys below). Runs until "
                  "interrupted.", epilog=_keys_help(ServeConfig, _SERVE_OPTIONS))
def serve(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Saved RM folder, or a "
                                         "registry URI: models:/mmrm-reward-model@champion")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        metavar="[KEY=VALUE]...", help="ServeConfig keys (below).")] = None,
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    image_root: ImageRootOption = None,
) -> None:
    from mmrm.config import apply_overrides, validate
    from mmrm.serve import resolve_model, serve_model

    with _user_errors():
        raw = dict(model=resolve_model(model), port=port,
                   image_root=str(image_root) if image_root else None)
        config = validate(ServeConfig, apply_overrides(raw, overrides or []), "mmrm serve")
        serve_model(config, log=typer.echo)


@app.command(help="RL against a reward model: a policy (the base fine-tuned on an "
                  "environment's answers) trained with TRL's GRPO on the environment's "
                  "prompts, rewarded by `mmrm serve` (started here, stopped by its pid), with "
                  "the gold quality of every completion known: every log_every steps the mean "
                  "reward, gold accuracy, cue shares and length go to runs/.../measures.jsonl "
                  "and MLflow. CONFIG is a YAML RLConfig (shipped: rl/tiny); KEY=VALUE "
                  "overrides. Needs the [rl] extra (TRL).")
def rl(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML RLConfig, or rl/tiny.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...")] = None,
    track: Annotated[bool, typer.Option(help="An MLflow run (experiment mmrm-rl) per run.")]
        = True,
) -> None:
    from mmrm.config import load_config
    from mmrm.rl import RLConfig, run_rl, served

    loaded = _load_or_exit(load_config, config, overrides or [], RLConfig)
    with _user_errors():
        from mmrm.model import check_model_whole

        check_model_whole(loaded.reward_model)
        with _rl_tracker(loaded, track) as tracker, served(
                loaded.reward_model, loaded.port, typer.echo) as server:
            result = run_rl(loaded, server.url, tracker, typer.echo)
    typer.echo(json.dumps(result, indent=2))


@contextmanager
def _rl_tracker(config, track: bool):
    """An MLflow run of experiment ``mmrm-rl`` named by the environment and the reward model
    (or the no-op tracker)."""
    from mmrm.tracking.tracker import NoOpTracker

    if not track:
        yield NoOpTracker()
        return
    import mlflow

    from mmrm.tracking.runs import _experiment_id, check_tracking_server, tracking_uri
    from mmrm.tracking.tracker import MLflowTracker

    check_tracking_server(tracking_uri())
    mlflow.set_tracking_uri(tracking_uri())
    experiment = _experiment_id(mlflow, "mmrm-rl")
    name = f"{config.env}/{Path(config.reward_model).parent.name}/seed{config.seed}"
    with mlflow.start_run(experiment_id=experiment, run_name=name,
                          tags={"mmrm.environment": config.env,
                                "mmrm.reward_model": config.reward_model}):
        yield MLflowTracker()


@app.command(help="Run one pipeline stage from params.yaml (what `dvc repro` and the Prefect "
                  "flow call): benchmark, convert --env E, convert-real --name N, split --name "
                  "N, base, proxy --env E, train --env E --variant V, derive --env E --variant "
                  "V, evaluate, score.")
def stage(
    name: Annotated[StageName, typer.Argument(metavar="STAGE", help="One of: " + ", ".join(
        s.value for s in StageName) + ".")],
    env: Annotated[Optional[str], typer.Option(
        help="Environment (convert, proxy, train): one of the params' sources.")] = None,
    variant: Annotated[Optional[str], typer.Option(
        help="Variant (train, derive): one of the params' variants (derived_variants).")
    ] = None,
    dataset: Annotated[Optional[str], typer.Option("--name", help="Real data set "
                                                   "(convert-real, split).")] = None,
    params: Annotated[Path, typer.Option(help="Pipeline params YAML.")] = Path("params.yaml"),
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...")] = None,
) -> None:
    from mmrm.pipeline.params import load_params
    from mmrm.pipeline.registry import stage as registered

    loaded = _load_or_exit(load_params, params, overrides or [])
    chosen = registered(name.value)
    given = {"env": env, "variant": variant, "name": dataset}
    arguments = {arg: given[arg] for arg in chosen.arguments}
    missing = [f"--{arg}" for arg, value in arguments.items() if value is None]
    if missing:
        typer.echo(f"error: stage {chosen.name} needs {' and '.join(missing)}", err=True)
        raise typer.Exit(code=2)
    variants = loaded.derived_variants if chosen.name == "derive" else loaded.variants
    known = {"env": [*loaded.builtin, *loaded.real_datasets], "variant": variants,
             "name": list(loaded.real_datasets)}
    for arg, value in arguments.items():
        if value not in known[arg]:
            typer.echo(f"error: --{arg} {value}: not one of the params' "
                       f"{', '.join(known[arg]) or '(none)'}", err=True)
            raise typer.Exit(code=2)
    typer.echo(f"stage {chosen.name} {' '.join(arguments.values())}".rstrip())
    with _user_errors():
        result = chosen.run(loaded, **arguments)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "matrix"}, indent=2,
                          default=str))
    if chosen.name == "evaluate":
        typer.echo(result["matrix"].to_markdown())


@app.command("dvc-yaml", help="Write dvc.yaml from the pipeline's stage registry (code deps: "
                              "each stage's import closure); --check only compares.")
def dvc_yaml(
    path: Annotated[Path, typer.Option("--path", help="The file.")] = Path("dvc.yaml"),
    check: Annotated[bool, typer.Option(help="Exit 1 if the file differs from the registry's "
                                             "(write nothing).")] = False,
) -> None:
    from mmrm.outputs import write_atomic
    from mmrm.pipeline.dvcfile import HEADER, render

    with _user_errors():
        if not check and path.exists() and \
                not path.read_text(errors="replace").startswith(HEADER):
            raise ValueError(f"{path}: exists and is not a dvc.yaml mmrm rendered (its first "
                             f"lines differ): refused; remove it first, or give another "
                             f"--path")
        text = render(path.resolve().parent)
    if check:
        same = path.exists() and path.read_text() == text
        verdict = "up to date" if same else "differs from the registry: run mmrm dvc-yaml"
        typer.echo(f"{path}: {verdict}")
        raise typer.Exit(code=0 if same else 1)
    with _user_errors():
        write_atomic(path, text)
    typer.echo(f"wrote {path}")


def _named_paths(items: list[str], what: str) -> dict[str, Path]:
    """``NAME=PATH`` (or a bare ``PATH``, named by itself) -> ``{NAME: PATH}``."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (item, item)
        if name in named:
            typer.echo(f"error: {what} name {name!r} given twice", err=True)
            raise typer.Exit(code=2)
        named[name] = Path(path)
    return named


def _eval_files(data: dict[str, Path], fmt: SourceFormat, work: Path,
                on_error: OnError) -> dict[str, Path]:
    """Released benchmark files -> pairwise JSONL under ``work`` (pairs pass through)."""
    if fmt.value == "pairs":
        return data
    converted = {}
    for name, src in data.items():
        out = work / re.sub(r"[^\w.-]+", "_", name) / "pairs.jsonl"
        with _user_errors():
            manifest = run_convert(fmt.value, src, out, on_error=on_error)
        _report(manifest, out)
        converted[name] = out
    return converted


@app.command("eval", help="Evaluate a saved reward model on pairwise data: accuracy (ties "
                          "count half, and are counted), reward margins, per data set and per "
                          "subset (the records' `subset` field) with the macro average.\n\n"
                          "DATA is NAME=PATH or PATH. With --format, PATH is a released "
                          "benchmark (vlrewardbench: its data/ folder of parquet files; "
                          "mmrewardbench: data/all_data.json) converted first under --work.")
def eval_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Saved RM directory.")],
    data: Annotated[list[str], typer.Argument(metavar="DATA...", help="NAME=PATH or PATH.")],
    format: Annotated[SourceFormat, typer.Option(
        "--format", "-f", help="Format of DATA (default: mmrm pairwise JSONL).")] =
        SourceFormat("pairs"),
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")] = None,
    plots: Annotated[Optional[Path], typer.Option(
        help="Write reward/margin histograms (NAME.png) into this folder.")] = None,
    work: Annotated[Path, typer.Option(help="Where converted benchmarks go.")] =
        Path("data/eval"),
    batch_size: Annotated[int, typer.Option(help="Pairs per forward.")] = 32,
    on_error: OnErrorOption = OnError.RAISE,
    trust_remote_code: TrustOption = False,
) -> None:
    from mmrm.data import unknown_tokens_note
    from mmrm.evaluate.metrics import file_report, score_pairs_file
    from mmrm.evaluate.plots import plot_reward_margins
    from mmrm.inference import load_reward_model
    from mmrm.model import check_model_whole

    with _user_errors():
        named = _named_paths(data, "data set")
        refuse_overwriting_inputs(named.values(), {
            "--out": out, **{f"--plots {name}.png": plots / f"{name}.png"
                             for name in named if plots is not None}})
        if out is not None:                 # a folder that cannot be made: before any work
            out.parent.mkdir(parents=True, exist_ok=True)
        check_model_whole(model, trust_remote_code)      # before any conversion or loading
        files = _eval_files(named, format, work, on_error)
        scorer, collator = load_reward_model(model, trust_remote_code=trust_remote_code)
        reports = {}
        for name, path in files.items():
            pairs, chosen, rejected = score_pairs_file(scorer, collator, path, batch_size,
                                                       progress=True)
            reports[name] = file_report(path, pairs, chosen, rejected, collator.processor)
            note = unknown_tokens_note(str(path), len(pairs),
                                       reports[name]["pairs_with_unknown_tokens"])
            if note:
                typer.echo(note, err=True)
            if plots is not None:
                plot_reward_margins(chosen, rejected, plots / f"{name}.png", f"{model} on {name}")
    text = json.dumps({"model": str(model), "datasets": reports}, indent=2)
    if out is not None:
        with _user_errors():
            from mmrm.outputs import write_atomic

            write_atomic(out, text + "\n")
    typer.echo(text)


@app.command(help="The cross-distribution matrix: every model on every test set. Rows are "
                  "ROW=MODEL_DIR; a row is in distribution on the column named like the part "
                  "of ROW before '/' (povid/sfc_two_stage was trained on povid). Writes "
                  "matrix.json, matrix.md and matrix.png to --out.")
def matrix(
    model: Annotated[list[str], typer.Option("--model", help="ROW=MODEL_DIR (repeat).")],
    test: Annotated[list[str], typer.Option("--test", help="SOURCE=PAIRS.jsonl (repeat).")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/matrix"),
    batch_size: Annotated[int, typer.Option(help="Pairs per forward.")] = 32,
) -> None:
    from mmrm.evaluate.matrix import cross_distribution
    from mmrm.model import check_model_whole

    with _user_errors():
        models = _named_paths(model, "model")
        tests = _named_paths(test, "test")
        refuse_overwriting_inputs(tests.values(), {f"--out {name}": out / name for name in
                                                   ("matrix.json", "matrix.md", "matrix.png")})
        for folder in models.values():
            check_model_whole(folder)             # every one before the first is evaluated
        out.mkdir(parents=True, exist_ok=True)    # a folder that cannot be made: before any work
        result = cross_distribution(models, tests, batch_size=batch_size, progress=True)
        paths = result.write(out)
    typer.echo(result.to_markdown())
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command(help="How exploitable is a preference data set by text alone? Trains (--config) "
                  "or loads (--proxy) a text-only proxy RM, scores TEST (default DATA), and "
                  "reports text-only accuracy, the shortcut-failure subset, a multimodal RM's "
                  "accuracy on it vs the rest and their gap (SFD, with --model), and the most "
                  "predictive textual cues of DATA.")
def diagnose(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Pairwise JSONL (training).")],
    test: Annotated[Optional[Path], typer.Option(
        help="Held-out pairs of the same distribution (default: DATA itself).")] = None,
    proxy: Annotated[Optional[Path], typer.Option(help="A trained text-only RM.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="TrainConfig YAML to train the proxy with (its data.train becomes DATA).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="A multimodal RM, for the SFD.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/diagnose"),
    top: Annotated[int, typer.Option(help="Cues to list.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Pairs per forward.")] = 32,
) -> None:
    from mmrm.data import load_pairs
    from mmrm.evaluate.diagnosis import diagnose_pairs, diagnosis_markdown
    from mmrm.evaluate.metrics import score_pairs_file
    from mmrm.inference import load_reward_model

    if (proxy is None) == (config is None):
        typer.echo("error: give exactly one of --proxy DIR or --config CONFIG", err=True)
        raise typer.Exit(code=2)
    with _user_errors():
        refuse_overwriting_inputs([data, test], {f"--out {name}": out / name for name in
                                                 ("diagnosis.json", "diagnosis.md")})
        out.mkdir(parents=True, exist_ok=True)    # a folder that cannot be made: before any work
        if proxy is None:
            proxy = _train_diagnosis_proxy(config, data, out)
        test = test or data
        scorer, collator = load_reward_model(proxy)
        if collator.mode.value == "multimodal":
            typer.echo(f"warning: {proxy} was trained with images; a text-only proxy is expected",
                       err=True)
        pairs, text_c, text_r = score_pairs_file(scorer, collator, test, batch_size,
                                                 progress=True)
        mm_scores = None
        if model is not None:
            scorer, collator = load_reward_model(model)
            mm_scores = score_pairs_file(scorer, collator, test, batch_size, progress=True)[1:]
        report = diagnose_pairs(pairs, text_c, text_r, mm_scores, load_pairs(data), top)
    report = {"data": str(data), "test": str(test), "proxy": str(proxy),
              "model": str(model) if model else None, **report}
    with _user_errors():
        from mmrm.outputs import write_atomic

        write_atomic(out / "diagnosis.json", json.dumps(report, indent=2) + "\n")
        write_atomic(out / "diagnosis.md", diagnosis_markdown(report))
    typer.echo(diagnosis_markdown(report))
    typer.echo(f"wrote {out / 'diagnosis.json'}, {out / 'diagnosis.md'}")


def _train_diagnosis_proxy(config: Path, data: Path, out: Path) -> Path:
    from mmrm.config import load_config, with_overrides
    from mmrm.proxy import proxy_config
    from mmrm.train import train as run_train

    base = _load_or_exit(load_config, config, [])
    run = proxy_config(with_overrides(base, {"data.train": [str(data)], "data.eval": {},
                                             "output_dir": str(out / "run")}))
    run_train(run, log=typer.echo, resume=False)
    return Path(run.output_dir) / "final"


@app.command("plot-weights", help="Histograms of the SFC pair weights over training (early, "
                                  "middle, late) from a run's metrics.jsonl.")
def plot_weights(
    run: Annotated[Path, typer.Argument(help="Run folder (with metrics.jsonl) or the file.")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write.")] = None,
) -> None:
    from mmrm.evaluate.plots import plot_weight_histograms

    metrics = run / "metrics.jsonl" if run.is_dir() else run
    try:
        path = plot_weight_histograms(metrics, out or metrics.with_name("weights.png"))
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {path}")


def _config_with_seed(cls, path: Path | None, seed: int | None):
    """A config from YAML (or the defaults), with ``--seed`` applied on top."""
    from mmrm.config import load_config

    overrides = [f"seed={seed}"] if seed is not None else []
    if path is not None:
        return _load_or_exit(load_config, path, overrides, cls)
    return cls.model_validate({"seed": seed} if seed is not None else {})


@contextmanager
def _user_errors():
    """Bad input (a record, a path, a value) ends the command with ``error: ...`` and exit
    code 2 instead of a traceback."""
    try:
        yield
    except (RecordError, ValueError, OSError) as err:   # OSError: unreadable, read-only, ...
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None


def _load_or_exit(loader, *args):
    try:
        return loader(*args)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="mmrm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
