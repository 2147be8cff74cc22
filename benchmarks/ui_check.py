"""What a researcher sees in the MLflow UI after a sweep: a headless browser opens the address
`make ui` prints and checks, without any click, that the sweep's jobs and the `ppl_ratio/mean`
column are on screen; it saves screenshots to look at.

    .venv/bin/python benchmarks/ui_check.py --dir LAUNCH_DIR --out /tmp/ui   # a finished sweep
    .venv/bin/python benchmarks/ui_check.py --sweep --out /tmp/ui            # runs a debug one

LAUNCH_DIR is where the sweep was launched (its `mlruns/mlflow.db`). The UI is started with the
README's command (`mlflow ui --backend-store-uri sqlite:///LAUNCH_DIR/mlruns/mlflow.db`) on a
free port of 127.0.0.1; the browser is Playwright (from PyPI) driving the system's Chromium
(`--chromium`, default: `chromium` on the PATH), so nothing is downloaded. Screenshots:

  runs_table.png          the address `python -m regionbench.report --url` prints
  parent_run.png          the sweep's parent run: its description (what was compared, numbers)
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
        header = page.locator('.ag-header-cell[col-id="metrics.`ppl_ratio/mean`"]')
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

        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{parent}?{_ML}")
        note = page.get_by_text("conditions,", exact=False).first
        note.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "parent_run.png"))
        results.append(("parent run's description on its page", note.is_visible()))

        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}")
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / "experiment_default.png"))
        results.append((f"plain experiment address lands on {page.url.split('#')[1]}", True))
        browser.close()
    return results


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
