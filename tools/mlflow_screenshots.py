"""Screenshots of the MLflow UI on real runs, for docs/mlflow.md: a headless browser, a real `mlflow server`.

    make demo                                   # or any runs in ./mlflow.db and ./mlartifacts
    python -m tools.mlflow_screenshots --out docs/images

Starts `mlflow server` on a free loopback port over the store, opens the latest training run of
``--experiment``, its metrics, the registered model and its newest version in Chromium (headless), and
writes one PNG per page. Needs what the project does not install for its jobs: Playwright's Python
package and a Chromium (`pip install playwright` and Debian's `apt-get install chromium`; or
`playwright install chromium` where its download is reachable).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.local_cluster import free_port

# Without the background-networking flags Chromium keeps calling out to Google's hosts, which a closed
# network refuses; --no-sandbox because the tool may run as root (containers, CI).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _serve(store: str, artifacts: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer /health within {timeout_s:.0f} s")


def pages(url: str, experiment: str, registered_model: str | None, run_id: str | None = None,
          prefix: str = "mlflow-") -> dict[str, str]:
    """File name -> the UI address to photograph, from what the store holds (the latest run, or ``run_id``)."""
    import mlflow

    client = mlflow.MlflowClient(url, registry_uri=url)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in the store: run `make demo` first (or pass --experiment)")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"experiment {experiment!r} has no runs")
    run = run_id or runs[0].info.run_id
    base = f"{url}/#/experiments/{found.experiment_id}"
    out = {f"{prefix}runs.png": f"{base}/runs",
           f"{prefix}run-overview.png": f"{base}/runs/{run}",
           f"{prefix}run-metrics.png": f"{base}/runs/{run}/model-metrics"}
    if registered_model:
        versions = client.search_model_versions(f"name = '{registered_model}'")
        if versions:
            newest = max(int(v.version) for v in versions)
            out[f"{prefix}registered-model.png"] = f"{url}/#/models/{registered_model}"
            out[f"{prefix}model-version.png"] = f"{url}/#/models/{registered_model}/versions/{newest}"
    return out


def _close_side_panels(page) -> None:
    """The UI opens its assistant beside a run; closed, the page shows the run across the screen."""
    for button in page.get_by_role("button", name="Close").all():
        if button.is_visible():
            button.click()
            time.sleep(0.5)


def photograph(addresses: dict[str, str], out: Path, chromium: str | None, width: int, height: int,
               settle_s: float) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:  # a new empty profile each launch
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        for name, address in addresses.items():
            page.goto(address, wait_until="load")  # not networkidle: the UI polls for ever
            time.sleep(settle_s)  # charts draw after the data arrives
            _close_side_panels(page)
            page.screenshot(path=str(out / name))
            written.append(out / name)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}", help="MLflow backend store URI")
    parser.add_argument("--artifacts", type=Path, default=Path.cwd() / "mlartifacts")
    parser.add_argument("--experiment", default="finetune-classifier")
    parser.add_argument("--registered-model", default="review-sentiment")
    parser.add_argument("--run", default=None, help="the run to open (default: the experiment's latest)")
    parser.add_argument("--prefix", default="mlflow-", help="file names start with it")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--chromium", default="/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None,
                        help="a Chromium binary (default: Debian's, else Playwright's own)")
    parser.add_argument("--size", default="1440x1100", help="viewport WIDTHxHEIGHT")
    parser.add_argument("--settle-s", type=float, default=6.0)
    args = parser.parse_args(argv)
    width, height = (int(n) for n in args.size.split("x"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(args.store, args.artifacts, port)
    try:
        _wait_healthy(url, server)
        addresses = pages(url, args.experiment, args.registered_model, args.run, args.prefix)
        for path in photograph(addresses, args.out, args.chromium,
                               width, height, args.settle_s):
            print(path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
