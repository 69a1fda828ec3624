"""The workbook as a person meets it in JupyterLab: `make lab`, in headless Chromium.

What got in a person's way, and what is checked here:

- every start showed a "Build Recommended" dialog (a source extension that `dash`, an open3d dependency,
  installs), whose Build button failed: `make lab` (tools/jupyter/jupyter_lab_config.py) switches the build
  check off;
- the notebooks named no kernel: opening one asked which kernel to use, and the notebook showed as modified
  before anything ran. tools/nb_tidy.py (`make nbclean`, checked by `make check-clean`) gives every notebook
  the `kernelspec` and `language_info` that `make lab`'s kernel (tools/jupyter/kernels/python3) reports;
- after reloading the tab, every k3d view stayed blank: widgets made by `offline_widgets` (talking to no
  frontend) were still listed by the kernel, and k3d's frontend asked one of them for its code, which never
  came. `offline_widgets` now keeps them off the kernel's list;
- open3d greeted Jupyter users with a banner in every notebook that imported it: sparse3d keeps it quiet.

The browser tests start JupyterLab with `make lab` itself (LAB_DIR: a temporary folder with copies of the
notebooks; LAB_ARGS: a free loopback port and a token), so they test the command line and configuration a
user gets. They are marked `browser`; the others run in `make test`.
"""
import json, os, re, secrets, shutil, subprocess, sys, time
from pathlib import Path

import pytest

import test_docs_browser
from test_docs_browser import ROOT, free_port, poll_pixels, stop, wait_http, watch

browser = test_docs_browser.browser   # the fixture: a fresh headless Chromium recording requests that leave loopback

sys.path.insert(0, str(ROOT/'tools'))
import nb_tidy  # noqa: E402


# --- without a browser ---------------------------------------------------------------------------------------

def bare_notebook(**metadata):
    "A notebook as a helper script might write it: a code cell whose saved output carries Open3D's banner"
    text = ['Jupyter environment detected. Enabling Open3D WebVisualizer.\n',
            '[Open3D INFO] WebRTC GUI backend enabled.\n',
            '[Open3D INFO] WebRTCWindowSystem: HTTP handshake server disabled.\n', '6 sequences rendered\n']
    banner_only = dict(output_type='stream', name='stdout', text=text[:3])
    return dict(nbformat=4, nbformat_minor=5, metadata=metadata, cells=[
        dict(cell_type='code', id='a1', metadata={}, execution_count=None, source='import open3d',
             outputs=[dict(output_type='stream', name='stdout', text=text), banner_only,
                      dict(output_type='execute_result', metadata={}, execution_count=1, data={'text/plain': ['3']})])])


def test_tidy_gives_kernel_metadata_and_drops_the_banner():
    info = nb_tidy.language_info()
    nb = bare_notebook(jupytext={'main_language': 'python'})
    changed = nb_tidy.tidy(nb, info)
    assert changed == ['kernelspec', 'language_info', 'Open3D banner in the outputs of cell a1'], changed
    md = nb['metadata']
    assert md['kernelspec'] == {'display_name': 'python3', 'language': 'python', 'name': 'python3'}
    assert md['language_info']['name'] == 'python' and md['language_info']['version'] == sys.version.split()[0]
    assert md['jupytext'] == {'main_language': 'python'}                       # other metadata kept
    outs = nb['cells'][0]['outputs']
    assert [o['output_type'] for o in outs] == ['stream', 'execute_result'], outs   # the banner-only output is gone
    assert outs[0]['text'] == ['6 sequences rendered\n']                     # the rest of an output is kept
    assert nb_tidy.tidy(nb, info) == [], 'tidying twice changes nothing'
    old = dict(name='python', version='3.10.1')
    other = bare_notebook(language_info=old)
    nb_tidy.tidy(other, info)
    assert other['metadata']['language_info'] == old, 'an existing language_info is kept (another Python: no churn)'


def test_nbdev_clean_keeps_what_tidy_writes():
    "The tidied metadata is a fixed point of nbdev_clean with this project's settings (else check-clean flip-flops)"
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    nb = bare_notebook()
    nb_tidy.tidy(nb, nb_tidy.language_info())
    before = json.loads(json.dumps(nb))
    clean_nb(nb, False, cfg.get('allowed_metadata_keys').split(), cfg.get('allowed_cell_metadata_keys').split(), True)
    assert nb['metadata'] == before['metadata'], (nb['metadata'], before['metadata'])


def test_lab_kernel_is_the_one_the_notebooks_name():
    "The kernel `make lab` offers (tools/jupyter/kernels) has the name and display name of the notebooks' kernelspec"
    spec = json.loads((ROOT/'tools'/'jupyter'/'kernels'/'python3'/'kernel.json').read_text())
    assert (spec['display_name'], spec['language']) == ('python3', 'python'), spec
    assert spec['argv'][0] == 'python', 'jupyter_client runs "python" with the server\'s own interpreter (the venv)'


def kernel_output(code, env) -> str:
    "Everything a fresh IPython kernel (this venv's) prints while running `code`"
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name='python3', env=env, cwd=str(ROOT))
    out = []
    try:
        kc.execute_interactive(code, timeout=120, output_hook=lambda m: out.append(
            m['content'].get('text', '') if m['msg_type'] == 'stream' else
            m['content'].get('evalue', '') if m['msg_type'] == 'error' else ''))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return ''.join(out)


def test_open3d_is_quiet_in_a_kernel():
    "Imported in a Jupyter kernel, open3d greets the user; through sparse3d it does not"
    env = {k: v for k, v in os.environ.items() if k != 'OPEN3D_DISABLE_WEB_VISUALIZER'}
    env.update(OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    bare = kernel_output('import open3d', env)
    assert 'Jupyter environment detected' in bare, f'open3d prints no banner any more: this checks nothing ({bare!r})'
    quiet = kernel_output('import sparse3d.synthetic, sparse3d.preprocess, open3d\nprint("imported")', env)
    assert quiet.strip() == 'imported', quiet


# --- `make lab` in a browser -----------------------------------------------------------------------------------

LIVE_NOTEBOOK = {
    'cells': [
        {'cell_type': 'code', 'execution_count': None, 'id': 'offline', 'metadata': {}, 'outputs': [], 'source': [
            'import numpy as np\n',
            'from sparse3d.viz import offline_widgets, show_voxels\n',
            'g = np.zeros((16, 16, 16), np.float32)\n',
            'g[3:13, 5:8, 3:13] = 1                              # a seat\n',
            'for x in (3, 11):\n',
            '    for z in (3, 11): g[x:x + 2, :5, z:z + 2] = 1     # four legs\n',
            'g[3:13, 8:15, 3:5] = 1\n',
            'with offline_widgets(): tested = show_voxels(g)     # as the chapters test their viewers\n',
            'tested.set_threshold(0.4)']},
        {'cell_type': 'code', 'execution_count': None, 'id': 'live', 'metadata': {}, 'outputs': [], 'source': [
            'show_voxels(g, menu_visibility=False, axes_helper=0)']}],
    'metadata': {'kernelspec': dict(nb_tidy.KERNELSPEC), 'language_info': nb_tidy.language_info()},
    'nbformat': 4, 'nbformat_minor': 5}


@pytest.fixture
def make_lab(tmp_path):
    "`make lab` over a temporary folder (copies of notebooks go in `.dir`), on a free loopback port; `.url(path)`"
    if not shutil.which('make'): pytest.skip('no make')
    if not (Path(sys.prefix)/'bin'/'jupyter').exists(): pytest.skip(f'no jupyter in {sys.prefix} (pip: jupyterlab)')
    work, port, token = tmp_path/'lab', free_port(), secrets.token_hex(16)
    work.mkdir()
    args = f'--port={port} --ServerApp.ip=127.0.0.1 --ServerApp.token={token} --ServerApp.port_retries=0'
    # this venv, and its setup taken as done (-o: make does not re-run `make setup` for a newer settings.ini)
    cmd = ['make', '-C', str(ROOT), '--no-print-directory', '-o', f'{sys.prefix}/.sparse3d-setup', 'lab',
           f'VENV={sys.prefix}', f'LAB_DIR={work}', f'LAB_ARGS={args}']
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path/'runtime'), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path/'workspaces'),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path/'settings'), OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    class Lab:
        dir = work
        def url(self, path): return f'http://127.0.0.1:{port}/{path}{"&" if "?" in path else "?"}token={token}'
        def log(self): return (tmp_path/'lab.log').read_text(errors='replace')[-3000:]
    try:
        wait_http(Lab().url('api/status'), proc, 120)
        yield Lab()
    finally:
        stop(proc)
        log.close()


def open_notebook(page, lab, name):
    "Open notebook `name` in its own fresh workspace; wait for its cells and for the kernel to be idle"
    page.goto(lab.url(f'lab/workspaces/{re.sub(r"[^a-z0-9]", "", name.lower())}/tree/{name}?reset'), wait_until='load')
    page.locator('.jp-Notebook .jp-Cell').first.wait_for(state='visible', timeout=120_000)
    page.wait_for_function('() => [...document.querySelectorAll(".jp-StatusBar-TextItem")]'
                           '.some(e => /\\| Idle$/.test(e.textContent.trim()))', timeout=120_000)


def dialogs_within(page, seconds):
    "The texts of the dialogs JupyterLab shows within `seconds` (none are answered)"
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        d = page.locator('.jp-Dialog')
        if d.count(): return [d.first.inner_text()[:300]]
        page.wait_for_timeout(300)
    return []


@pytest.mark.browser
@pytest.mark.timeout(420)
def test_make_lab_opens_a_chapter_without_questions(make_lab, browser, tmp_path):
    "A chapter opens with no dialog (no build, no kernel choice), the kernel it names, and nothing modified"
    for name in ('00_config.ipynb', '10_visualize.ipynb'): shutil.copy(ROOT/'nbs'/name, make_lab.dir/name)
    page = browser.new_page()
    errors = watch(page)
    for name in ('00_config.ipynb', '10_visualize.ipynb'):
        open_notebook(page, make_lab, name)
        seen = dialogs_within(page, 8)          # the build check ran at start; a kernel prompt comes at once
        page.screenshot(path=str(tmp_path/f'{name}.png'))
        assert not seen, f'{name}: JupyterLab asked {seen} ({tmp_path/name}.png)'
        kernel = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar-kernelName').first.inner_text().strip()
        assert kernel == 'python3', f'{name}: kernel {kernel!r}'
        dirty = page.locator('.lm-TabBar-tab.jp-mod-dirty').all_inner_texts()
        assert not dirty, f'{name} shows as modified right after opening (tabs {dirty}); lab log:\n{make_lab.log()}'
    toasts = page.locator('.Toastify__toast').all_inner_texts()
    assert not toasts, f'JupyterLab notified {toasts}'
    config = json.loads(page.locator('#jupyter-config-data').text_content())
    assert (config['buildCheck'], config['buildAvailable']) == (False, False), config
    assert not [e for e in errors if 'favicon' not in e], errors
    assert not browser.outside, f'JupyterLab asked the web for {browser.outside}'


def viewer_share(page, png, cell=1, timeout=90_000):
    "Share of the live viewer's output (the `cell`-th cell) that is drawn, once its k3d canvas is there (0: no canvas)"
    out = page.locator('.jp-Notebook .jp-Cell').nth(cell).locator('.jp-OutputArea-output').first
    try: out.locator('canvas').first.wait_for(state='attached', timeout=timeout)
    except Exception:                                           # no canvas: k3d never drew; keep the picture
        page.screenshot(path=str(png))
        return 0.0
    out.scroll_into_view_if_needed()
    return poll_pixels(lambda p: out.screenshot(path=p), png, tries=80, page=page)


@pytest.mark.browser
@pytest.mark.timeout(480)
def test_live_viewer_draws_and_survives_a_reload(make_lab, browser, tmp_path):
    "show_voxels draws in `make lab`; after a reload of the tab (the kernel still running) it draws again"
    (make_lab.dir/'live.ipynb').write_text(json.dumps(LIVE_NOTEBOOK), encoding='utf-8')
    page = browser.new_page()
    errors = watch(page)
    open_notebook(page, make_lab, 'live.ipynb')
    page.locator('.jp-Notebook .jp-Cell .jp-InputArea-editor').first.click()
    page.keyboard.press('Shift+Enter')
    page.keyboard.press('Shift+Enter')
    before = viewer_share(page, tmp_path/'before.png')
    assert before > 0.03, f'{before:.2%} of the viewer drawn ({tmp_path/"before.png"}); lab log:\n{make_lab.log()}'
    page.keyboard.press('Control+s')
    page.locator('.lm-TabBar-tab.jp-mod-dirty').first.wait_for(state='detached', timeout=30_000)
    page.reload(wait_until='load')
    page.locator('.jp-Notebook .jp-Cell').first.wait_for(state='visible', timeout=120_000)
    after = viewer_share(page, tmp_path/'after.png', timeout=60_000)
    page.screenshot(path=str(tmp_path/'reloaded.png'))
    assert after > 0.03, f'after a reload only {after:.2%} of the viewer is drawn ({tmp_path/"after.png"})'
    assert not [e for e in errors if 'k3d' in e.lower() or 'widget' in e.lower()], errors
    assert not browser.outside, f'JupyterLab asked the web for {browser.outside}'
