"""Helpers for tests/test_browser.py: a private JupyterLab server and a headless Chromium driven by Selenium.

Nothing here imports Jittor; the notebooks' kernels do. The browser is Debian's Chromium with its chromedriver
(`apt-get install -y chromium chromium-driver`); Selenium is pointed at both explicitly, so Selenium Manager never
tries to download a browser.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path

APT_HINT = "apt-get install -y chromium chromium-driver"
STDERR_MIME = "application/vnd.jupyter.stderr"


def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) paths, None for each one missing. GDLIB_CHROMIUM / GDLIB_CHROMEDRIVER override."""
    def first(env: str, *candidates) -> str | None:
        if os.environ.get(env):
            candidates = (os.environ[env],)
        return next((p for p in candidates if p and os.path.isfile(p) and os.access(p, os.X_OK)), None)

    return (first("GDLIB_CHROMIUM", shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")),
            first("GDLIB_CHROMEDRIVER", shutil.which("chromedriver"), "/usr/bin/chromedriver"))


def launch_environment() -> dict[str, str]:
    """The environment this process was started with. The test session has already imported gdlib and Jittor
    (tests/conftest.py), which set variables such as log_silent, use_mkl or nvcc_path in os.environ; a kernel that
    inherited them would not start the way a learner's does. Linux keeps the original in /proc/self/environ."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
        env = dict(kv.split("=", 1) for kv in raw.decode(errors="surrogateescape").split("\0") if "=" in kv)
        if env.get("PATH"):
            return env
    except OSError:
        pass
    return dict(os.environ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- the server
@dataclass
class Lab:
    """`jupyter lab` serving a folder, on a free port with a random token, in its own process group."""
    root_dir: Path
    work_dir: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "Lab":
        settings = self.work_dir / "settings"
        # every cell stays in the DOM (JupyterLab 4 may otherwise skip rendering off-screen cells), each cell's run
        # time is recorded in its metadata, and no news or update toasts cover the page
        _write_json(settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
                    {"windowingMode": "none", "recordTiming": True})
        _write_json(settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                    {"fetchNews": "false", "checkForUpdates": False})
        env = launch_environment()
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(self.work_dir / sub)   # the user's own Jupyter config and kernels stay out of it
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root_dir}", "--LabApp.expose_app_in_browser=True",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={self.work_dir / 'workspaces'}",
               "--ServerApp.allow_root=True"]
        self.log_path = self.work_dir / "jupyter_lab.log"
        log = open(self.log_path, "wb")
        # behind a shell that waits for it and always exits 0: Jittor (imported by this pytest process) ends the
        # whole process at once when a direct child dies of a signal other than SIGTERM ("Caught SIGCHLD ... quick
        # exit"), which a server killed at teardown would otherwise trigger
        self.proc = subprocess.Popen(["/bin/sh", "-c", '"$@"; exit 0', "sh", *cmd], cwd=self.root_dir, env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def kernels(self) -> list[dict]:
        return self.api("GET", "/api/kernels")

    def shutdown_kernels(self) -> None:
        try:
            for k in self.kernels():
                try:
                    self.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
                except OSError:
                    pass
        except OSError:
            pass

    def stop(self) -> None:
        """Shut the kernels down, then the server; kill the server and any of its kernels that linger."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.shutdown_kernels()
            try:
                self.api("POST", "/api/shutdown", timeout=10)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # whatever is left: the server (the shell's child) and its kernels, which run in sessions of their own and
        # outlive a killed server, so they are found by their connection files, which lie in our work_dir
        for sig in (signal.SIGTERM, signal.SIGKILL):
            server = _descendants(self.proc.pid) if self.proc.poll() is None else []
            alive = [p for p in {*server, *_with_arg(f"{self.work_dir / 'runtime'}{os.sep}")} if _alive(p)]
            for p in alive:
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            if alive:
                time.sleep(3)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()   # the shell; SIGTERM, which Jittor's SIGCHLD handler lets pass
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return ""


def _descendants(pid: int) -> list[int]:
    """Child processes of pid, recursively (Linux /proc; empty elsewhere)."""
    parent = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        kids = [c for c, p in parent.items() if p == todo.pop()]
        out += kids
        todo += kids
    return out


def _with_arg(text: str) -> list[int]:
    """Processes whose command line contains text (Linux /proc; empty elsewhere)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                out.append(int(d.name))
        except (OSError, ValueError):
            continue
    return [p for p in out if p != os.getpid()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:   # a zombie child of ours counts as gone
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return True


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# --------------------------------------------------------------------------------------------- the browser
def make_driver(chromium: str, chromedriver: str, profile_dir: Path | None = None, width: int = 1400,
                height: int = 1000):
    """Headless Chromium under chromedriver; its profile in profile_dir (else chromedriver's own temporary one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    if profile_dir is not None:
        opts.add_argument(f"--user-data-dir={profile_dir}")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--no-first-run", "--no-default-browser-check",
              "--disable-extensions", "--disable-background-timer-throttling",
              "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    return driver


# JavaScript run in the page. Each returns plain JSON.
_JS_CELLS = r"""
const out = [];
document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell').forEach((c, i) => {
  if (!c.classList.contains('jp-CodeCell')) return;
  const p = c.querySelector('.jp-InputPrompt');
  const src = c.querySelector('.jp-InputArea-editor .cm-content');
  out.push({index: i, prompt: p ? p.textContent.trim() : '', empty: src ? src.textContent.trim() === '' : false});
});
return out;
"""

# output_type of every output of every code cell, from JupyterLab's own model (window.jupyterapp exists because
# the server runs with --LabApp.expose_app_in_browser); DOM alone cannot tell a traceback from a stderr stream
_JS_OUTPUTS = r"""
const app = window.jupyterapp;
const w = app && app.shell.currentWidget;
if (!w || !w.content || !w.content.model) return null;
const res = [];
const cells = w.content.model.cells;
for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i);
  if (c.type !== 'code') continue;
  const outs = c.outputs;
  for (let j = 0; j < outs.length; j++) {
    const o = outs.get(j).toJSON();
    res.push({cell: i, execution_count: c.executionCount, output_type: o.output_type, name: o.name || null,
              ename: o.ename || null, evalue: o.evalue || null,
              text: o.output_type === 'stream' ? String(o.text).slice(0, 2000)
                    : (o.traceback ? o.traceback.join('\n').replace(/\x1b\[[0-9;]*m/g, '').slice(-3000) : null)});
  }
}
return res;
"""


def _clean(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


class NotebookPage:
    """One notebook open in JupyterLab in a Selenium-driven browser."""

    def __init__(self, driver, lab: Lab, name: str, workspace: str = "browser-test"):
        # a workspace of its own per notebook: JupyterLab restores a workspace's open tabs, which would reopen (and
        # restart the kernel of) the previous notebook
        self.d, self.lab, self.name, self.workspace = driver, lab, name, workspace

    # -- opening and running
    def open(self, timeout: float = 120.0) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        self.d.get(f"{self.lab.base}/lab/workspaces/{self.workspace}/tree/{self.name}?token={self.lab.token}")
        WebDriverWait(self.d, timeout).until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell")))
        self.wait_kernel_idle(timeout)

    def kernel_states(self) -> list[str]:
        return [k["execution_state"] for k in self.lab.kernels()]

    def wait_kernel_idle(self, timeout: float, settle: float = 1.0) -> None:
        """Until the notebook's kernel reports idle twice, `settle` seconds apart."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            s = self.kernel_states()
            if s and all(x == "idle" for x in s):
                time.sleep(settle)
                s = self.kernel_states()
                if s and all(x == "idle" for x in s):
                    return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: kernel not idle after {timeout:.0f} s (states {self.kernel_states()})")

    def menu(self, menu_label: str, command: str) -> None:
        """Click a main-menu entry (e.g. 'Run') and then the item bound to a JupyterLab command."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        for item in self.d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item"):
            if item.text.strip() == menu_label:
                item.click()
                break
        else:
            raise AssertionError(f"no '{menu_label}' menu in the menu bar")
        sel = f'.lm-Menu-item[data-command="{command}"]'
        WebDriverWait(self.d, 10).until(EC.element_to_be_clickable((By.CSS_SELECTOR, sel))).click()

    def run_all(self) -> None:
        self.menu("Run", "runmenu:run-all")

    def cells(self) -> list[dict]:
        return self.d.execute_script(_JS_CELLS)

    def outputs(self) -> list[dict]:
        return self.d.execute_script(_JS_OUTPUTS) or []

    def cell_times(self) -> dict[int, float]:
        """Seconds each code cell ran, by cell index (JupyterLab records them: recordTiming is on)."""
        out = {}
        for i, a, b in self.d.execute_script(_JS_TIMES):
            try:
                out[i] = (datetime.fromisoformat(b.replace("Z", "+00:00"))
                          - datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds()
            except (AttributeError, ValueError):
                pass
        return out

    def problems(self) -> list[tuple[str, str]]:
        """(kind, text) for every error output ('error'), stderr stream ('stderr') and broken widget ('widget') in the
        notebook, including inside widget Output areas (which the notebook model does not hold)."""
        found = []
        for o in self.outputs():
            if o["output_type"] == "error":
                found.append(("error", f"cell {o['cell']}: {o['ename']}: {o['evalue']}\n{o['text']}"))
            elif o["output_type"] == "stream" and o["name"] == "stderr":
                found.append(("stderr", f"cell {o['cell']}: {o['text']}"))
        for kind, text in self.d.execute_script(_JS_DOM_PROBLEMS, STDERR_MIME):
            found.append((kind, text))
        return list(dict.fromkeys(found))

    def wait_all_executed(self, timeout: float, progress: bool = True) -> float:
        """Until every non-empty code cell shows an execution count and the kernel is idle; fails at once on an
        error output (Run All stops there, so waiting on would only time out)."""
        t0 = last = time.monotonic()
        while True:
            errors = [t for k, t in self.problems() if k == "error"]
            if errors:
                raise AssertionError(f"{self.name}: a cell failed while running all cells:\n" + "\n".join(errors))
            cells = self.cells()
            pending = [c for c in cells if not c["empty"] and not _counted(c["prompt"])]
            if progress and time.monotonic() - last >= 60:
                last = time.monotonic()
                print(f"  {self.name}: {len(cells) - len(pending)}/{len(cells)} code cells done after "
                      f"{last - t0:.0f} s", flush=True)
            if not pending and all(s == "idle" for s in self.kernel_states()):
                self.wait_kernel_idle(60)
                if all(_counted(c["prompt"]) for c in self.cells() if not c["empty"]):
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{self.name}: not all cells ran within {timeout:.0f} s; "
                                   f"cells still waiting (index, prompt): {[(c['index'], c['prompt']) for c in pending][:10]}")
            time.sleep(2)

    # -- widgets
    def widget_roots(self):
        """The outermost widget view of every widget output, in notebook order."""
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, _ROOT_WIDGETS)

    def widget_info(self, i: int) -> dict:
        return self.d.execute_script(_JS_WIDGET_INFO, _ROOT_WIDGETS, i)

    def move(self, i: int, kind: str, timeout: float) -> dict:
        """Move one control of kind 'slider' / 'dropdown' / 'button' in widget i; wait for its Output area to change
        and the kernel to go idle. Returns what was moved, from and to what, and how long the update took."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import Select

        root = self.widget_roots()[i]
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", root)
        before = self.widget_info(i)
        if not before["outputs"]:
            raise AssertionError(f"{self.name}: widget {i} has no Output area to watch")
        if kind == "slider":
            box = root.find_elements(By.CSS_SELECTOR, ".widget-slider")[0]
            handle = box.find_element(By.CSS_SELECTOR, ".noUi-handle")
            label, old = _label(box), handle.get_attribute("aria-valuetext")
            at_max = float(handle.get_attribute("aria-valuenow")) >= float(handle.get_attribute("aria-valuemax"))
            handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)   # one keyboard step, as a learner would
            new = handle.get_attribute("aria-valuetext")
        elif kind == "dropdown":
            box = root.find_elements(By.CSS_SELECTOR, ".widget-dropdown")[0]
            sel = Select(box.find_element(By.TAG_NAME, "select"))
            label, old = _label(box), sel.first_selected_option.text
            opts = [o.text for o in sel.options]
            if len(opts) < 2:
                raise AssertionError(f"{self.name}: dropdown {label!r} has a single option")
            j = next(k for k, t in enumerate(opts) if t != old)
            sel.select_by_index(j)
            new = sel.first_selected_option.text
        elif kind == "button":
            btn = root.find_elements(By.CSS_SELECTOR, "button.jupyter-button")[0]
            label, old, new = btn.text, "", "clicked"
            btn.click()
        else:
            raise ValueError(kind)
        if new == old:
            raise AssertionError(f"{self.name}: widget {i}: {kind} {label!r} did not move (still {old!r})")
        t0 = time.monotonic()
        while True:
            now = self.widget_info(i)
            changed = now["outputs"] != before["outputs"] and any(h.strip() for h in now["outputs"])
            if changed and all(s == "idle" for s in self.kernel_states()):
                self.wait_kernel_idle(60)
                now = self.widget_info(i)
                if now["outputs"] != before["outputs"]:
                    break
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{self.name}: widget {i}: output did not change within {timeout:.0f} s after "
                                   f"moving {kind} {label!r} {old!r} -> {new!r}")
            time.sleep(0.5)
        return {"kind": kind, "label": label, "from": old, "to": new, "seconds": round(time.monotonic() - t0, 1),
                "images_before": before["images"], "images_after": now["images"], "text_after": now["text"][:300]}


def _counted(prompt: str) -> bool:
    return re.fullmatch(r"\[\d+\]:", prompt) is not None


def _label(box) -> str:
    from selenium.webdriver.common.by import By
    labels = box.find_elements(By.CSS_SELECTOR, ".widget-label")
    return labels[0].text.strip() if labels else "?"


_JS_TIMES = r"""
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.content.model) return [];
const cells = w.content.model.cells, r = [];
for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i);
  const e = c.type === 'code' ? (c.getMetadata('execution') || {}) : {};
  if (e['iopub.execute_input'] && e['shell.execute_reply']) r.push([i, e['iopub.execute_input'], e['shell.execute_reply']]);
}
return r;
"""

_ROOT_WIDGETS = (".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell-outputArea > .jp-OutputArea-child > "
                 ".jp-OutputArea-output > .jupyter-widgets")

_JS_WIDGET_INFO = r"""
const root = document.querySelectorAll(arguments[0])[arguments[1]];
const outs = Array.from(root.querySelectorAll('.widget-output'));
const cell = root.closest('.jp-Cell');
const cells = Array.from(cell.parentElement.children).filter(e => e.classList.contains('jp-Cell'));
return {
  cell: cells.indexOf(cell),
  outputs: outs.map(o => o.innerHTML),
  images: outs.reduce((n, o) => n + o.querySelectorAll('img').length, 0),
  text: outs.map(o => o.innerText).join('\n'),
  sliders: Array.from(root.querySelectorAll('.widget-slider')).map(s => (s.querySelector('.widget-label') || {}).textContent),
  dropdowns: Array.from(root.querySelectorAll('.widget-dropdown')).map(s => (s.querySelector('.widget-label') || {}).textContent),
  buttons: Array.from(root.querySelectorAll('button.jupyter-button')).map(b => b.textContent),
};
"""

_JS_DOM_PROBLEMS = r"""
const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
if (!nb) return [];
const r = [];
nb.querySelectorAll('.jupyter-widgets .jp-OutputArea-output[data-mime-type="' + arguments[0] + '"]')
  .forEach(e => r.push(['stderr', 'inside a widget: ' + e.textContent.slice(0, 2000)]));
nb.querySelectorAll('.jp-OutputArea-output').forEach(e => {
  const t = e.textContent;
  if (/Error displaying widget|Traceback \(most recent call last\)/.test(t) && !e.querySelector('.jp-OutputArea-output'))
    r.push(['widget', t.slice(0, 2000)]);
});
return r;
"""
