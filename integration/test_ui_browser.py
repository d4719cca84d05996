"""End to end in a real browser: ``mlflow-safeflavor ui`` driven by headless Chromium (Debian's package).

The page runs as the real command (``python -m mlflow_safeflavor.cli ui``) against a real
``mlflow server`` holding one safe (promoted), one pickled (holding the protected ``@production``)
and one rejected version. Playwright drives ``/usr/bin/chromium`` (``SAFEFLAVOR_CHROMIUM``
overrides); it never downloads a browser. Screenshots go to the test's temporary directory
(``SAFEFLAVOR_UI_SHOTS`` copies them elsewhere, e.g. to refresh docs/img).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serverproc import free_port, stop_group, wait_url

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SAFEFLAVOR_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 180_000


def _server_helpers() -> Any:
    """This directory's conftest module (start_mlflow_server, wait_healthy), as pytest loaded it or fresh."""
    path = (ROOT / "integration" / "conftest.py").resolve()
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == path:
            return module
    spec = importlib.util.spec_from_file_location("safeflavor_integration_servers", path)
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


@dataclass
class Stack:
    ui_url: str
    ui_tmp: Path
    safe: str
    pickled: str
    rejected: str
    X: np.ndarray
    model: Any


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    import mlflow
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import mlflow_safeflavor
    from mlflow_safeflavor.registry import PromotionRejectedError, promote

    helpers = _server_helpers()
    root = tmp_path_factory.mktemp("ui-browser")
    # The page checks its tracking server at start and exits when it does not answer: start it second.
    server = helpers.wait_healthy(helpers.start_mlflow_server(root / "mlflow"))
    ui_tmp = root / "ui-tmp"
    ui_tmp.mkdir()
    port = free_port()
    log = root / "ui.log"
    env = {**helpers._server_env(), "TMPDIR": str(ui_tmp)}
    with open(log, "wb") as fh:
        ui = subprocess.Popen(
            [sys.executable, "-m", "mlflow_safeflavor.cli", "ui", "--port", str(port), "--tracking-uri", server.url],
            cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous, previous_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    try:
        helpers.wait_healthy(server)
        mlflow.set_tracking_uri(server.url)
        X, y = load_iris(return_X_y=True)
        model = LogisticRegression(max_iter=300).fit(X, y)
        suffix = uuid.uuid4().hex[:4]
        names = {k: f"{k}-{suffix}" for k in ("churn", "fraud", "legacy")}
        experiment = mlflow.MlflowClient().create_experiment(f"ui-browser-{suffix}")
        with mlflow.start_run(experiment_id=experiment):
            mlflow_safeflavor.log_model(model, name="m", input_example=X[:5], registered_model_name=names["churn"])
            mlflow.sklearn.log_model(model, name="p", input_example=X[:5], registered_model_name=names["fraud"],
                                     pip_requirements=["scikit-learn"], serialization_format="pickle")
            mlflow.sklearn.log_model(model, name="c", input_example=X[:5], registered_model_name=names["legacy"],
                                     pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
        promote(names["churn"], "1", "champion")
        mlflow.MlflowClient().set_registered_model_alias(names["fraud"], "production", "1")
        with pytest.raises(PromotionRejectedError):
            promote(names["legacy"], "1", "champion")
        wait_url(f"http://127.0.0.1:{port}/healthz", ui, log)
        yield Stack(f"http://127.0.0.1:{port}", ui_tmp, names["churn"], names["fraud"], names["legacy"], X, model)
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
        stop_group(ui)
        stop_group(server.proc)


@pytest.fixture(scope="module")
def browser() -> Any:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium` "
                    "(.ci/run does this) or point SAFEFLAVOR_CHROMIUM at a Chromium binary. This test never "
                    "downloads a browser.")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # the page's first scan imports scikit-learn in the server
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, tmp_path) -> Any:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    pg.console_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))  # type: ignore[attr-defined]
    yield pg
    context.close()


@pytest.fixture
def shot(page, tmp_path) -> Any:
    """Save a full-page screenshot under tmp_path/shots (and SAFEFLAVOR_UI_SHOTS, when set)."""
    out = tmp_path / "shots"
    out.mkdir()
    extra = os.environ.get("SAFEFLAVOR_UI_SHOTS")

    def take(name: str) -> Path:
        path = out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, "an empty screenshot"
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return take


def _workspace_files(stack: Stack) -> list[str]:
    return [str(p) for p in stack.ui_tmp.glob("safeflavor-ui-*/**/*") if p.is_file()]


def _hostile(marker: Path) -> bytes:
    # Protocol 0, two imports: one whose module name is markup, then posix.system. Either would run
    # `touch MARKER` if anything unpickled this.
    return (f"c<img src=x onerror=alert(1)>\nsystem\n(S'touch {marker}'\ntR0"
            f"cposix\nsystem\n(S'touch {marker}'\ntR.").encode()


def test_check_convert_download_then_refuse_a_hostile_pickle(stack, page, shot, tmp_path):
    from playwright.sync_api import expect

    import mlflow_safeflavor

    benign = tmp_path / "churn_model.pkl"
    benign.write_bytes(pickle.dumps(stack.model, protocol=5))
    page.goto(stack.ui_url + "/")
    expect(page.locator("h1")).to_have_text("Check a pickle")
    page.set_input_files("#file", str(benign))
    page.click("#scan-button")
    expect(page.locator("#verdict")).to_contain_text("Every import is allowed")
    expect(page.locator("#imports tbody tr.allowed")).to_have_count(3)
    expect(page.locator("#imports tbody")).to_contain_text("sklearn.linear_model._logistic.LogisticRegression")
    expect(page.locator("#convert-button")).to_be_visible()
    shot("01-scan-allowed")

    page.click("#convert-button")
    expect(page.locator(".job[data-state=running], .job[data-state=queued], .job[data-state=done]").first).to_be_visible()
    expect(page.locator("#convert-result")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".job").first).to_have_attribute("data-state", "done")
    expect(page.locator("#verify-verdict")).to_have_text("Verify: every check passed")
    expect(page.locator("#convert-summary")).to_contain_text("identical predict")
    shot("02-converted")

    with page.expect_download() as info:
        page.click("#download-link")
    download = info.value
    assert download.suggested_filename == "churn_model.safeflavor.zip"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        zf.extractall(tmp_path / "unzipped")
    loaded = mlflow_safeflavor.load_model(str(tmp_path / "unzipped" / "churn_model.safeflavor"))
    np.testing.assert_array_equal(loaded.predict(stack.X), stack.model.predict(stack.X))
    expect(page.locator("#download-link")).to_have_class("button disabled")
    deadline = time.monotonic() + 10
    while _workspace_files(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workspace_files(stack) == [], "the upload and the zip are deleted once used"

    marker = tmp_path / "MARKER"
    hostile = tmp_path / "innocent.pkl"
    hostile.write_bytes(_hostile(marker))
    page.set_input_files("#file", str(hostile))
    page.click("#scan-button")
    expect(page.locator("#verdict")).to_have_text("Refused before unpickling — nothing was loaded")
    refused = page.locator("#imports tbody tr.refused")
    expect(refused).to_have_count(2)
    expect(refused.nth(0)).to_contain_text("<img src=x onerror=alert(1)>.system")  # shown as text
    expect(refused.nth(1)).to_contain_text("posix.system")
    expect(page.locator("#scan-message")).to_contain_text("refused before unpickling")
    expect(page.locator("#convert-area")).to_be_hidden()
    expect(page.locator("#convert-result")).to_be_hidden()
    assert page.locator("#imports img").count() == 0 and page.dialogs == []
    shot("03-scan-refused")
    assert not marker.exists(), "the hostile pickle's payload ran"
    assert _workspace_files(stack) == [], "a refused upload is deleted at once"
    assert page.console_errors == [], page.console_errors


def test_registry_table_filters_and_version_pages(stack, page, shot):
    from playwright.sync_api import expect

    page.goto(stack.ui_url + "/registry")
    safe = page.locator(f'tr[data-name="{stack.safe}"]')
    pickled = page.locator(f'tr[data-name="{stack.pickled}"]')
    rejected = page.locator(f'tr[data-name="{stack.rejected}"]')
    expect(page.locator("#versions tbody tr")).to_have_count(3)
    expect(safe.locator("td.format")).to_have_text("safe flavor (sklearn)")
    expect(safe.locator("td.verification .badge")).to_have_text("verified")
    expect(safe.locator("td.aliases")).to_have_text("@champion")
    expect(pickled.locator("td.format")).to_have_text("pickle")
    expect(pickled.locator("td.verification")).to_have_text("unverified")
    expect(pickled.locator("td.aliases .alias")).to_have_class("alias protected danger")
    expect(rejected.locator("td.format")).to_have_text("cloudpickle")
    expect(rejected.locator("td.verification .badge")).to_have_text("rejected")
    expect(rejected.locator("td.verification .reason")).to_contain_text("is not a safe-flavor model")
    shot("04-registry")

    page.click('a[data-filter="protected-unverified"]')
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    expect(page.locator("#versions tbody tr")).to_have_attribute("data-name", stack.pickled)
    shot("05-registry-protected-unverified")
    page.click('a[data-filter="unsafe"]')
    expect(page.locator("#versions tbody tr")).to_have_count(2)
    assert sorted(page.locator("#versions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")) == sorted(
        [stack.pickled, stack.rejected])

    # The pickled version: its verify report fails, and promoting it fails with promote's own error.
    page.click(f'a:text-is("{stack.pickled}")')
    expect(page.locator("#version-title")).to_contain_text(stack.pickled)
    expect(page.locator("#verify-verdict")).to_contain_text("Verify: FAILED", timeout=TIMEOUT_MS)
    expect(page.locator("#verify-report")).to_contain_text("model.pkl has a pickle file name")
    page.fill("#alias", "champion")
    page.click("#promote-button")
    expect(page.locator("#promote-jobs .message")).to_contain_text(
        f"model '{stack.pickled}' version 1 was not promoted to @champion", timeout=TIMEOUT_MS)
    expect(page.locator("#promote-jobs .message strong")).to_have_text("PromotionRejectedError: ")
    shot("06-version-pickled")

    # The safe version: every check passes and its artifacts still match the gate's tag.
    page.goto(f"{stack.ui_url}/registry/{stack.safe}/1")
    expect(page.locator("#verify-verdict")).to_have_text("Verify: every check passed", timeout=TIMEOUT_MS)
    expect(page.locator("#verify-report tr", has_text="safeflavor.verified")).to_contain_text("still hash to sha256:")
    shot("07-version-safe")
    assert page.dialogs == [] and page.console_errors == [], (page.dialogs, page.console_errors)
