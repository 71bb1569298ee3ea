"""Streaming read of pairwise JSONL: lines/s and memory against a plain json.loads loop.

Writes N pairwise lines (default 100,000) that share one image, then reads them twice in
this process: once with a bare ``json.loads`` loop (the baseline: no validation) and once
with ``mmrm.formats.read_pairs`` (validation, duplicate-id check, image existence). Prints
lines/s of each and their ratio, the peak Python heap of each (tracemalloc) at N/10 and N
lines, and the process's peak RSS. Bounded memory shows as a peak that does not grow with
the file beyond the id set used to refuse duplicates.

    python benchmarks/read_pairs.py [--lines 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from PIL import Image

from mmrm.formats import ImageCheck, ImageRules, checked_image_path, read_pairs


def write_file(folder: Path, lines: int) -> Path:
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "img.png")
    path = folder / f"pairs_{lines}.jsonl"
    with open(path, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": f"pair-{i:08d}", "prompt": "What is in the image? " * 3,
                                "img_path": "img.png", "chosen": f"A red square, number {i}.",
                                "rejected": f"A blue circle, number {i}."}) + "\n")
    return path


def baseline(path: Path) -> int:
    count = 0
    with open(path) as f:
        for line in f:
            json.loads(line)
            count += 1
    return count


def mmrm_reader(path: Path) -> int:
    return sum(1 for _ in read_pairs(path, images=ImageRules(check=ImageCheck.EXISTS)))


def measure(fn, path: Path) -> tuple[float, int, int]:
    """Seconds and count of an untraced pass, then the peak heap of a traced one."""
    checked_image_path.cache_clear()
    start = time.perf_counter()
    count = fn(path)
    seconds = time.perf_counter() - start
    checked_image_path.cache_clear()
    tracemalloc.start()
    fn(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, count, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = write_file(Path(tmp), args.lines // 10), write_file(Path(tmp), args.lines)
        print(f"file: {args.lines} lines, {large.stat().st_size / 2**20:.1f} MiB")
        rows = {}
        runs = (("json.loads loop (baseline)", baseline), ("mmrm read_pairs", mmrm_reader))
        for name, fn in runs:
            _, _, peak_small = measure(fn, small)
            seconds, count, peak = measure(fn, large)
            assert count == args.lines, (name, count)
            rows[name] = (count / seconds, peak_small, peak)
            print(f"{name:<28} {count / seconds:>10,.0f} lines/s   peak heap "
                  f"{peak_small / 2**20:6.2f} MiB at {args.lines // 10} lines, "
                  f"{peak / 2**20:6.2f} MiB at {args.lines} lines")
        (base, *_), (ours, *_) = rows.values()
        print(f"speed ratio mmrm / baseline: {ours / base:.2f}")
        _, small_peak, large_peak = rows["mmrm read_pairs"]
        print(f"mmrm peak heap growth for 10x the lines: {large_peak / small_peak:.1f}x "
              f"({(large_peak - small_peak) / (args.lines * 0.9):.0f} bytes per extra line, "
              f"the duplicate-id set)")
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"process peak RSS: {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
