"""What a researcher sees in the MLflow UI after a sweep: a headless browser opens the address
`make ui` prints and checks, without any click, that the sweep's jobs and the `ppl_ratio/mean`
column are on screen with its interval beside it, every language's column, no seed column and
no group rows, and every value at 4 significant digits; then the pages of a job and of the
parent run; it saves screenshots to look at.

    .venv/bin/python benchmarks/ui_check.py --dir LAUNCH_DIR --out /tmp/ui   # a finished sweep
    .venv/bin/python benchmarks/ui_check.py --sweep --out /tmp/ui            # runs a debug one

LAUNCH_DIR is where the sweep was launched (its `mlruns/mlflow.db`). The UI is started with the
README's command (`mlflow ui --backend-store-uri sqlite:///LAUNCH_DIR/mlruns/mlflow.db`) on a
free port of 127.0.0.1; the browser is Playwright (from PyPI) driving the system's Chromium
(`--chromium`, default: `chromium` on the PATH), so nothing is downloaded. Screenshots:

  runs_table.png          the address `python -m regionbench.report --url` prints
  runs_table_languages.png  the same scrolled right, to the per-language columns
  job_run.png             the sweep's first job: its description (what was done, its numbers)
  parent_run.png          the sweep's parent run: its description (what was compared, numbers)
  parent_note_expanded.png  the same after "Show more": the description's table
  parent_table.png        its artifact sweep_comparison.json, which MLflow shows as a table
  experiment_default.png  the experiment opened without that address (MLflow 3.17: GenAI view)

It prints one line per check and exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REPO = Path(__file__).resolve().parent.parent
DEBUG_SWEEP = ["-m", "+debug=default", "eval=ppl", "metric=taylor,random", "seed=0,1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(launch_dir: Path, port: int):
    """The README's command, served until the block ends."""
    mlflow = Path(sys.executable).with_name("mlflow")
    store = f"sqlite:///{(launch_dir / 'mlruns' / 'mlflow.db').resolve()}"
    server = subprocess.Popen(
        [
            str(mlflow),
            "ui",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow ui did not start on port {port}") from None
                time.sleep(0.5)
        yield
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def report(launch_dir: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "regionbench.report", *args],
        cwd=launch_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def child_names(launch_dir: Path, parent: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(launch_dir / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return sorted(r.info.run_name for r in runs)


def check(launch_dir: Path, out: Path, chromium: str) -> list[tuple[str, bool]]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = report(launch_dir, "--url", "--port", str(port))
    query = parse_qs(url.split("?", 1)[1])
    parent = query["viewStateShareKey"][0]
    experiment = urlparse(url).fragment.split("/")[2]
    names = child_names(launch_dir, parent)
    results = []
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(launch_dir, port), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1700, "height": 1000})
        page.goto(url)
        view = saved_view(launch_dir, experiment, parent)
        metric_cols = [c for c in view["selectedColumns"] if c.startswith("metrics.")]
        mean = next(c for c in metric_cols if c.split("`")[1].endswith("ppl_ratio/mean"))
        header = page.locator(f'.ag-header-cell[col-id="{mean}"]')
        header.wait_for(timeout=60_000)
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)  # the grid settles its column widths
        page.screenshot(path=str(out / "runs_table.png"))
        box, grid = header.bounding_box(), page.locator(".ag-root-wrapper").first.bounding_box()
        inside = box is not None and box["x"] + box["width"] <= grid["x"] + grid["width"]
        results.append(("ppl_ratio/mean column on screen", inside))
        shown = [n for n in names if page.get_by_text(n, exact=True).first.is_visible()]
        results.append(
            (f"{len(shown)} of {len(names)} jobs of the sweep on screen", shown == names)
        )
        widths = [page.get_by_text(n, exact=True).first.evaluate(_CLIPPED) for n in names]
        results.append(("run names shown in full", not any(widths)))
        results += table_checks(page, metric_cols, mean, out)

        job = first_job(launch_dir, parent)
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{job}?{_ML}")
        words = page.get_by_text("Removing regions of", exact=False).first
        words.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "job_run.png"))
        results.append(("a job's description on its page", words.is_visible()))

        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{parent}?{_ML}")
        note = page.get_by_text("conditions,", exact=False).first
        note.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "parent_run.png"))
        results.append(("parent run's description on its page", note.is_visible()))
        more = page.get_by_text("Show more", exact=True)
        if more.count():
            more.first.click()
            page.wait_for_timeout(800)
        cells = page.locator("td").filter(has_text="%")
        results.append(("parent's description: its table as a table", cells.count() > 0))
        page.screenshot(path=str(out / "parent_note_expanded.png"))

        art = f"#/experiments/{experiment}/runs/{parent}/artifacts/sweep_comparison.json"
        page.goto(f"http://127.0.0.1:{port}/{art}?{_ML}")
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / "parent_table.png"))
        shown = page.get_by_role("columnheader", name="condition").count()
        results.append(("sweep_comparison.json shown as a table", shown > 0))

        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}")
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / "experiment_default.png"))
        results.append((f"plain experiment address lands on {page.url.split('#')[1]}", True))
        browser.close()
    return results


def saved_view(launch_dir: Path, experiment: str, parent: str) -> dict:
    import json

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(launch_dir / 'mlruns' / 'mlflow.db').resolve()}")
    return json.loads(client.get_experiment(experiment).tags[f"mlflow.sharedViewState.{parent}"])


def first_job(launch_dir: Path, parent: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(launch_dir / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return sorted(runs, key=lambda r: r.info.start_time)[0].info.run_id


def table_checks(page, metric_cols: list[str], mean: str, out: Path) -> list[tuple[str, bool]]:
    """What the runs table shows without a click: the interval columns right of the headline,
    every language's column, no seed column and no group rows (MLflow's average of a group
    would show), and each value at 4 significant digits, uncut."""
    results = []
    at = metric_cols.index(mean)
    beside = [c.split("`")[1] for c in metric_cols[at + 1 : at + 3]]
    ids = page.locator(".ag-header-cell").evaluate_all(
        "hs => hs.map(h => h.getAttribute('col-id'))"
    )
    order = [i for i in ids if i and i.startswith("metrics.")]
    ok = order[order.index(mean) + 1 : order.index(mean) + 3] == metric_cols[at + 1 : at + 3]
    results.append((f"interval columns beside ppl_ratio/mean: {', '.join(beside)}", ok))
    langs = [c for c in metric_cols if "ppl_ratio/" in c and not c.endswith("/mean`")]
    cells: dict[tuple, tuple[str, bool]] = {}  # (row, column): (text, cut), as drawn
    read = """cs => cs.map(c => [c.closest('.ag-row').getAttribute('row-index'),
        c.getAttribute('col-id'), c.innerText.trim(), c.scrollWidth > c.clientWidth + 1])"""

    def collect():
        for row, col, text, cut in page.locator('.ag-cell[col-id^="metrics."]').evaluate_all(read):
            cells[row, col] = (text, cut)

    collect()
    seen = 0
    for col in langs:
        head = page.locator(f'.ag-header-cell[col-id="{col}"]')
        if not head.count():  # off to the right: scroll the grid until it is drawn
            page.locator(".ag-body-horizontal-scroll-viewport").evaluate("e => e.scrollLeft += 400")
            page.wait_for_timeout(300)
        seen += page.locator(f'.ag-header-cell[col-id="{col}"]').count() > 0
        collect()
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "runs_table_languages.png"))  # scrolled to the languages
    page.locator(".ag-body-horizontal-scroll-viewport").evaluate("e => e.scrollLeft = 0")
    results.append((f"{seen} of {len(langs)} per-language columns drawn", seen == len(langs) > 0))
    seed = page.locator('.ag-header-cell[col-id="params.`seed`"]').count()
    groups = page.get_by_text("Group:", exact=False).count()
    results.append(("no seed column and no averaged group rows", seed == 0 and groups == 0))
    values = [(t, cut) for t, cut in cells.values() if t not in ("", "-")]  # "-": not logged
    bad = [t for t, cut in values if cut or not _four_digits(t)]
    columns = len({col for (_, col), (t, _) in cells.items() if t not in ("", "-")})
    results.append(
        (f"{len(values)} values in {columns} columns at 4 significant digits, uncut", not bad)
    )
    if bad:
        print("not at 4 significant digits, or cut:", bad[:5])
    return results


def _four_digits(text: str) -> bool:
    """A number written with at most 4 significant digits (`0.9982`, `210.5`, `1`, `2.1e-5`)."""
    import re

    if not re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", text):
        return False
    digits = text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(digits.rstrip("0") if "." not in text else digits) <= 4


# true when the element's text is cut (an ellipsis): its content is wider than its box
_ML = "workflowType=machine_learning"  # MLflow 3.17 opens runs in its GenAI view otherwise
_CLIPPED = "e => e.scrollWidth > e.clientWidth + 1"


def debug_sweep(launch_dir: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-m", "regionbench", *DEBUG_SWEEP],
        cwd=launch_dir,
        env=env,
        check=True,
        capture_output=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where a finished sweep was launched")
    ap.add_argument("--sweep", action="store_true", help="run a debug sweep in a temporary dir")
    ap.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args()
    if (args.dir is None) == (not args.sweep):
        ap.error("give --dir LAUNCH_DIR or --sweep")
    with tempfile.TemporaryDirectory() as tmp:
        launch_dir = args.dir or Path(tmp)
        if args.sweep:
            debug_sweep(launch_dir)
        results = check(launch_dir.resolve(), args.out, args.chromium)
    for text, ok in results:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    print(f"screenshots: {args.out}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
