"""The quickstart in JupyterLab (`make lab`): open it, run all cells, and the app's widgets render
in the output area, plotly figure included, with no error in the page.

JupyterLab serves a copy of the notebook: running it there must not write outputs into the checkout.
"""
import json
import shutil

import pytest

from .conftest import ROOT, free_port, isolated_env, jupyter, serve

NOTEBOOK = "notebooks/00-quickstart.ipynb"
# Headless settings: start the notebook's kernel without asking, never fetch news or look for
# updates (requests off the machine), never autosave (the notebook is a copy anyway).
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copyfile(ROOT / NOTEBOOK, root / NOTEBOOK)
    settings = tmp_path / "lab-settings"
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port = free_port()
    cmd = [*jupyter("jupyterlab"), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}"]
    base = f"http://127.0.0.1:{port}"
    with serve(cmd, isolated_env(tmp_path), f"{base}/static/favicon.ico", tmp_path / "lab.log"):
        yield base


def test_run_all_cells_renders_the_app(new_page, lab, tmp_path):
    from playwright.sync_api import expect

    page, watch = new_page(lab)
    page.goto(f"{lab}/lab/tree/{NOTEBOOK}", timeout=120_000)
    # The notebook's kernel is started and idle: then run-all cannot be dropped or wait on a dialog.
    page.wait_for_function("""() => {
        const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const kernel = panel && panel.sessionContext && panel.sessionContext.session
            && panel.sessionContext.session.kernel;
        return kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
    }""", timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    output = page.locator(".jp-OutputArea-output")
    expect(output.get_by_role("button", name="Run")).to_be_visible(timeout=120_000)
    expect(output.get_by_label("model", exact=True)).to_be_visible()
    expect(output.get_by_label("method", exact=True)).to_be_visible()
    expect(output.get_by_text("0 of 0 stored runs")).to_be_visible()
    expect(output.locator(".js-plotly-plot")).to_be_visible(timeout=60_000)
    # the output area shows no traceback (an exception in the cell would be printed there)
    expect(page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "lab.png"))
    watch.assert_clean()
