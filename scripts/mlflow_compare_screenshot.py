"""Screenshot MLflow's compare view of a standard vs a shortcut-aware run, with headless
Chromium against a local MLflow UI, and check that the page really rendered.

Needs a project whose pipeline has run (``mlflow.db``) and Debian's ``chromium``
(``apt-get install chromium``). Starts ``mlflow server`` on a free loopback port, stops it by
its pid afterwards.

    python scripts/mlflow_compare_screenshot.py [--project .] [--env povid] \\
        [--out screenshots/mlflow_compare.png]

"Rendered" means: the PNG is a real screenshot (not blank: many colours, not mostly one),
and the DOM Chromium built contains both runs' names and the shared metric names
(``iid_mean``, ``ood_mean``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import free_port, start_mlflow, stop  # noqa: E402


def compare_runs(store: str, experiment: str, env: str) -> tuple[str, list]:
    """The experiment id and the newest standard and shortcut-aware train runs of ``env``."""
    import mlflow

    mlflow.set_tracking_uri(store)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {store}: run the pipeline first")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list",
                              filter_string=f"tags.`mmrm.environment` = '{env}' and "
                                            f"tags.`mmrm.role` = 'stage'",
                              order_by=["attributes.start_time DESC"])
    chosen = []
    for variant in ("none", "sfc_two_stage", "sfc_joint"):
        found = [r for r in runs if r.data.tags.get("mmrm.variant") == variant
                 and r.info.status == "FINISHED"]
        if found:
            chosen.append(found[0])
    if len(chosen) < 2:
        raise SystemExit(f"need a standard and a shortcut-aware train run of {env}")
    return exp.experiment_id, chosen[:2]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("chromium not found: apt-get install chromium")


def render(url: str, out: Path, budget_ms: int = 20000) -> str:
    """Screenshot ``url`` to ``out``; returns the DOM after scripts ran."""
    with tempfile.TemporaryDirectory() as profile:
        common = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
                  "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                  "--window-size=1600,2600", f"--virtual-time-budget={budget_ms}"]
        subprocess.run(common + [f"--screenshot={out}", url], check=True, capture_output=True,
                       timeout=180)
        return subprocess.run(common + ["--dump-dom", url], check=True, capture_output=True,
                              text=True, timeout=180).stdout


def check_png(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((400, 650))
        colours = rgb.getcolors(maxcolors=1 << 16) or []
        top = max(count for count, _ in colours) / (400 * 650) if colours else 1.0
        return {"size": image.size, "colours": len(colours), "top_colour_share": round(top, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--experiment", default="mmrm")
    parser.add_argument("--env", default="povid")
    parser.add_argument("--out", type=Path, default=Path("screenshots/mlflow_compare.png"))
    args = parser.parse_args()

    project = args.project.resolve()
    store = f"sqlite:///{project / 'mlflow.db'}"
    experiment_id, runs = compare_runs(store, args.experiment, args.env)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as state:
        port = free_port()
        start_mlflow(Path(state), project, port)
        try:
            query = urllib.parse.urlencode({
                "runs": json.dumps([r.info.run_id for r in runs]),
                "experiments": json.dumps([experiment_id])})
            url = f"http://127.0.0.1:{port}/#/compare-runs?{query}"
            dom = render(url, args.out)
        finally:
            stop(Path(state))
    png = check_png(args.out)
    names = [r.info.run_name for r in runs]
    found = {text: text in dom for text in [*names, "iid_mean", "ood_mean"]}
    ok = png["colours"] > 20 and png["top_colour_share"] < 0.95 and all(found.values())
    print(json.dumps({"url": url, "screenshot": str(args.out), "png": png,
                      "dom_contains": found, "rendered": ok}, indent=2))
    if not ok:
        raise SystemExit("the compare view did not render as expected")


if __name__ == "__main__":
    main()
