"""The notebooks' widgets in a real browser: JupyterLab served from a temporary copy of notebooks/, headless Chromium
driven by Selenium. For every notebook that builds a `gdlib.widgets` explorer: open it, Run -> Run All Cells, wait
until every code cell has an execution count and the kernel is idle, then in every widget move a slider (one arrow
key on its handle) and pick another option in a dropdown, and check each time that the widget's Output area changed
and that no cell (nor any widget Output) shows an error or stderr.

Needs Debian's Chromium and its driver (`apt-get install -y chromium chromium-driver`); without them the test skips,
unless GDLIB_REQUIRE_BROWSER=1 (set by .ci/run), where it fails instead. Run it alone: `pytest -m browser`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from browser_util import APT_HINT, Lab, NotebookPage, find_browser, make_driver

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REQUIRE = os.environ.get("GDLIB_REQUIRE_BROWSER") == "1"

RUN_TIMEOUT = 1800      # s for Run All Cells (nbmake's timeout); notebook 06 takes about 6-7 minutes here
MOVE_TIMEOUT = 600      # s for one widget update

# Jittor's own info-level log lines ("[i 1129 21:18:13.158541 88 log.cc:351] Load log_sync: 1") reach a cell's
# stderr from the C++ side; they are reported, not failed. Warnings ([w ...]) and errors ([e ...]) do fail.
_JITTOR_INFO = re.compile(r"^(\x1b\[[0-9;]*m)?\[i \d{4} [\d:.]+ \d+ [\w.]+:\d+\] .*$")
_EXPLORER_ERROR = re.compile(r"^\w*(Error|Exception)\b.*: ", re.M)   # what Explorer.update prints when fn raises


def _widget_notebooks() -> list[tuple[Path, int]]:
    """(notebook, number of explorers it builds) for each notebook whose code calls a gdlib.widgets factory."""
    out = []
    for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(p.read_text(encoding="utf-8"))["cells"]
                         if c["cell_type"] == "code")
        n = len(re.findall(r"\b[a-z]+_explorer\(", code))
        if n:
            out.append((p, n))
    return out


WIDGET_NOTEBOOKS = _widget_notebooks()


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"GDLIB_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_paths():
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable('selenium is not installed: pip install -e ".[dev]" (or ".[browser]")')
    chromium, driver = find_browser()
    if not chromium or not driver:
        _unavailable(f"Chromium and chromedriver are needed (found chromium={chromium}, chromedriver={driver}): "
                     f"as root, {APT_HINT}")
    return chromium, driver


@pytest.fixture(scope="module")
def lab(browser_paths, tmp_path_factory):
    """JupyterLab serving a temporary copy of the notebooks (.ipynb only); kernels and server end at teardown."""
    root = tmp_path_factory.mktemp("lab_notebooks")
    for p, _ in WIDGET_NOTEBOOKS:
        shutil.copy2(p, root / p.name)
    server = Lab(root_dir=root, work_dir=tmp_path_factory.mktemp("lab_state"))
    # a SIGTERM (a CI timeout, `timeout`) would end pytest without teardown and leave the server, its kernels and
    # the browser running: turn it into KeyboardInterrupt, which pytest tears down after
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def driver(browser_paths, tmp_path):
    d = make_driver(*browser_paths, profile_dir=tmp_path / "profile")   # a fresh browser per notebook
    try:
        yield d
    finally:
        d.quit()


REPORT: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _print_report():
    yield
    if REPORT:
        print("\n\nbrowser test, widgets moved per notebook:\n" + "\n".join(REPORT))


def test_widget_notebooks_found():
    assert WIDGET_NOTEBOOKS, "no notebook builds a gdlib.widgets explorer: the browser test would check nothing"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("nb,n_widgets", WIDGET_NOTEBOOKS, ids=[p.stem for p, _ in WIDGET_NOTEBOOKS])
def test_widgets_in_browser(nb, n_widgets, lab, driver, tmp_path):
    page = NotebookPage(driver, lab, nb.name, workspace=nb.stem.replace("_", "-"))
    lines, t0 = [], time.monotonic()
    try:
        page.open()
        page.run_all()
        run_s = page.wait_all_executed(RUN_TIMEOUT)
        roots = page.widget_roots()
        assert len(roots) == n_widgets, (f"{nb.name}: {n_widgets} explorer(s) built but {len(roots)} widget(s) "
                                         "rendered (do the kernel's ipywidgets and jupyterlab_widgets match?)")
        for i in range(len(roots)):
            info = page.widget_info(i)
            assert info["images"] or info["text"].strip(), f"{nb.name}: widget {i} shows nothing before any move"
            kinds = [k for k, have in (("slider", info["sliders"]), ("dropdown", info["dropdowns"]),
                                       ("button", info["buttons"])) if have]
            assert kinds, f"{nb.name}: widget {i} has no slider, dropdown or button"
            moved = []
            for kind in kinds[:2]:    # a slider and a dropdown where it has both
                m = page.move(i, kind, MOVE_TIMEOUT)
                assert m["images_after"] or m["text_after"].strip(), f"{nb.name}: widget {i} is empty after {m}"
                assert not _EXPLORER_ERROR.search(page.widget_info(i)["text"]), \
                    f"{nb.name}: widget {i} shows an error after moving {m['label']}: {m['text_after']}"
                moved.append(f"{m['kind']} '{m['label']}' {m['from']} -> {m['to']} (output changed in {m['seconds']} s)")
            lines.append(f"  widget {i} (cell {info['cell']}; sliders {info['sliders']}, dropdowns {info['dropdowns']}): "
                         + "; ".join(moved))
        problems = page.problems()
        noise = [t for k, t in problems if k == "stderr" and _only_jittor_info(t)]
        bad = [f"[{k}] {t}" for k, t in problems if not (k == "stderr" and _only_jittor_info(t))]
        assert not bad, f"{nb.name}: error or stderr output in the notebook:\n" + "\n".join(bad)
        slowest = sorted(page.cell_times().items(), key=lambda kv: -kv[1])[:3]
        REPORT.append(f"{nb.stem}: Run All {run_s:.0f} s (slowest cells: "
                      + ", ".join(f"#{i} {t:.0f} s" for i, t in slowest) + f"), {len(roots)} widget(s), "
                      f"total {time.monotonic() - t0:.0f} s"
                      + (f"; Jittor info lines on stderr (tolerated): {len(noise)}" if noise else ""))
        REPORT.extend(lines)
        print("\n" + "\n".join([REPORT[-len(lines) - 1]] + lines), flush=True)
    except BaseException:
        shot = tmp_path / f"{nb.stem}.png"
        try:
            driver.save_screenshot(str(shot))
            print(f"\n{nb.name}: screenshot at {shot}; jupyter lab log tail:\n{lab.log_tail()}")
        except Exception:
            pass
        REPORT.append(f"{nb.stem}: FAILED after {time.monotonic() - t0:.0f} s; done before the failure: {lines}")
        raise
    finally:
        lab.shutdown_kernels()   # one notebook's kernel at a time: the next one gets both cores


def _only_jittor_info(text: str) -> bool:
    body = text.split(": ", 1)[1] if text.startswith("cell ") else text
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    return bool(lines) and all(_JITTOR_INFO.match(ln) for ln in lines)
