"""Screenshot MLflow's compare view of a standard vs a shortcut-aware run, with headless
Chromium against a local MLflow UI, and check what a researcher actually *sees*.

Needs a project whose pipeline has run (``mlflow.db``), Debian's ``chromium``
(``apt-get install chromium``) and the ``playwright`` Python package (it drives that
Chromium; it downloads no browser). Starts ``mlflow server`` on a free loopback port, stops it
by its pid afterwards.

    python scripts/mlflow_compare_screenshot.py [--project .] [--env povid] \\
        [--out screenshots/mlflow_compare.png]

The plots are folded and "show diff only" is on, and the check is on the viewport (the PNG is
exactly that): both runs' names, the ``shortcut.weighting`` parameter row and the ``ID`` /
``OOD`` metric rows (the pipeline logs them under names that sort first) must lie inside it,
not merely in the page's HTML.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


#: What must be visible without scrolling, besides the two runs' names.
MUST_SEE = ("shortcut.weighting", "ID", "OOD")
VIEWPORT = {"width": 1600, "height": 1100}


def render(url: str, out: Path, texts: list[str]) -> dict[str, bool]:
    """Screenshot the viewport of ``url`` (diff-only view) to ``out``; for each of
    ``texts``, whether an element showing it lies inside the viewport."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url, wait_until="load", timeout=90000)
            page.get_by_text("OOD", exact=True).first.wait_for(timeout=60000)
            _arrange(page)
            page.screenshot(path=str(out))
            return {text: _in_view(page, text) for text in texts}
        finally:
            browser.close()


def _arrange(page) -> None:
    """What a researcher does first: fold away the plots, close the assistant panel, and
    show only the parameters that differ, so the weighting row and the metrics that matter
    (``ID`` and ``OOD``, named to sort first) come up under the runs' names."""
    for section in ("Visualizations",):
        header = page.get_by_text(section, exact=True)
        if header.count():
            header.first.click()
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    diff_only = page.get_by_role("switch").first
    if diff_only.count() and diff_only.get_attribute("aria-checked") != "true":
        diff_only.click()
    page.wait_for_timeout(1500)


def _in_view(page, text: str) -> bool:
    for element in page.get_by_text(text, exact=True).all():
        box = element.bounding_box()
        if box and box["width"] > 0 and 0 <= box["y"] and \
                box["y"] + box["height"] <= VIEWPORT["height"]:
            return True
    return False


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
            names = [r.info.run_name for r in runs]
            visible = render(url, args.out, [*names, *MUST_SEE])
        finally:
            stop(Path(state))
    png = check_png(args.out)
    ok = png["colours"] > 20 and png["top_colour_share"] < 0.95 and all(visible.values())
    print(json.dumps({"url": url, "screenshot": str(args.out), "png": png,
                      "visible_in_viewport": visible, "rendered": ok}, indent=2))
    if not ok:
        raise SystemExit("the compare view does not show what it should (see "
                         "visible_in_viewport)")


if __name__ == "__main__":
    main()
