"""The ``mmrm`` command: thin wrappers over the library's functions."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmrm.convert import FORMATS, convert as run_convert
from mmrm.formats import (ImageCheck, ImageRules, InferenceRecord, MultiRecord, PairRecord,
                          read_records)
from mmrm.images import DEFAULT_MAX_PIXELS
from mmrm.ledger import Ledger, OnError, RecordError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Shortcut-aware multimodal reward models: data, training, evaluation.")

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
                         "source file's folder). Absolute paths are refused under it.")]
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
    try:
        manifest = run_convert(format.value, src, out, on_error=on_error,
                               image_root=image_root, max_pixels=max_image_pixels)
    except (RecordError, ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
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
                  "report every problem with file:line: field: problem.")
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
    except (RecordError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps({"file": str(path), "kind": kind.value, **ledger.as_dict()},
                          indent=2))
    if ledger.skipped:
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
    from mmrm.synthetic.environments import BenchmarkConfig, convert_benchmark, write_benchmark

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
    no_resume: Annotated[bool, typer.Option(help="Ignore checkpoints in output_dir.")] = False,
) -> None:
    from mmrm.config import load_config
    from mmrm.train import train as run_train

    cfg = _load_or_exit(load_config, config, overrides or [])
    result = run_train(cfg, log=typer.echo, resume=not no_resume)
    typer.echo(json.dumps(result, indent=2))


@app.command("train-proxy", help="Train the text-only shortcut proxy of a config (its data, "
                                 "mode text_only, no weighting) and cache its per-pair losses "
                                 "for sfc_two_stage in OUTPUT_DIR/proxy_losses.json.")
def train_proxy(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML TrainConfig.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...")] = None,
) -> None:
    from mmrm.config import load_config
    from mmrm.train import train_text_proxy

    cfg = _load_or_exit(load_config, config, overrides or [])
    cache = train_text_proxy(cfg, log=typer.echo)
    typer.echo(f"proxy accuracy on its training data: {cache['accuracy']:.4f}")


def _config_with_seed(cls, path: Path | None, seed: int | None):
    """A config from YAML (or the defaults), with ``--seed`` applied on top."""
    from mmrm.config import load_config

    overrides = [f"seed={seed}"] if seed is not None else []
    if path is not None:
        return _load_or_exit(load_config, path, overrides, cls)
    return cls.model_validate({"seed": seed} if seed is not None else {})


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
