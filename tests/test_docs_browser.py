"""The documentation site, built and looked at in a real browser; and a live k3d widget in a real JupyterLab.

`make docs` (tools/build_docs.py) turns the notebooks into a static Sphinx site. What can go wrong is
mostly invisible in the files: a page that needs a CDN and is blank offline, a JavaScript error, an
iframe of a k3d snapshot that never draws, a search box that finds nothing, a `#| hide` cell that
shows. So:

- without a browser (in `make test`): a small site (home page + the Config chapter) is built into a
  temporary folder and its HTML is checked: API sections from show_doc, saved outputs, hidden cells
  hidden, `#| echo: false` honoured, nothing loaded from the web, a search index;
- with headless Chromium through Playwright (marked `browser`, in `make test-all`), against the site
  served by `python -m http.server` on a free loopback port: the home page and an API page render with
  no console errors and ask nothing from the web, search finds a function, the k3d snapshot embedded in
  a tutorial draws voxels (pixels), and JupyterLab, started on loopback in a temporary folder, runs a
  notebook cell whose live k3d widget draws (pixels).

Every server is started and stopped by its test, within a bounded time. Tests skip, saying why, when
Playwright or Chromium is missing (`make setup` installs both: Playwright from PyPI, `chromium` with apt).
"""
import contextlib, json, os, re, secrets, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
import build_docs  # noqa: E402

CHROMIUM = Path('/usr/bin/chromium')
ARGS = ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader']
PY = sys.executable


# --- building ------------------------------------------------------------------------------------------------

def build_site(tmp, *only):
    "Build the home page and the notebooks `only` into `tmp/site`, as `make docs` does, in its own process; the summary"
    cmd = [PY, str(ROOT/'tools'/'build_docs.py'), '--out', str(tmp/'site'), '--stage', str(tmp/'stage'), '--quiet',
           '--summary', str(tmp/'summary.json'), '--only', *only]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, f'the docs build failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}'
    return tmp/'site', json.loads((tmp/'summary.json').read_text())


@pytest.fixture(scope='module')
def small_site(tmp_path_factory):
    "The home page and the Config chapter, built into a temporary folder (no snapshot)"
    return build_site(tmp_path_factory.mktemp('docs_small'), '00_config')


@pytest.fixture(scope='module')
def site_with_snapshot(tmp_path_factory):
    "Home page, Config chapter and the tutorial that embeds a k3d snapshot, built into a temporary folder"
    return build_site(tmp_path_factory.mktemp('docs_k3d'), '00_config', '03_inspect_model')


def test_page_names_follow_nbdev():
    "Pages are named as nbdev's symbol index links to them"
    test = lambda p: build_docs.page_name(build_docs.NBS/p)
    assert test('00_config.ipynb') == 'config'
    assert test('10_visualize.ipynb') == 'visualize'
    assert test('tutorials/01_train_synthetic.ipynb') == 'tutorials/train_synthetic'
    assert test('index.ipynb') == 'index'


def test_building_runs_no_example_code():
    "For show_doc, a cell that mixes imports with other code runs only its imports: no training or rendering at build"
    src = 'import numpy as np\nfrom pathlib import Path\nroot = render_dataset(Path("/tmp/x"), 200)\nfit(cfg)\n'
    assert build_docs._imports_only(src) == 'import numpy as np\nfrom pathlib import Path'
    assert build_docs._imports_only('fit(cfg)') is None
    assert build_docs._imports_only('def broken(:') is None


def test_small_site_html(small_site):
    "No browser: what the build writes (runs in `make test`)"
    site, info = small_site
    # BENCHMARKS.md, FAULTS.md
    reports = [f'{page}.html' for name, page in build_docs.REPORTS.items() if (ROOT/name).exists()]
    assert sorted(info['pages']) == sorted(['config.html', 'index.html', *reports]), info['pages']
    assert not info['warnings'], info['warnings']
    config, home = (site/'config.html').read_text(encoding='utf-8'), (site/'index.html').read_text(encoding='utf-8')
    # show_doc API sections: a heading with nbdev's anchor, the signature, the docstring, the source link
    assert 'id="load_config"' in config and re.search(r'<h3>load_config', config)
    assert 'A validated <a' in config and 'class="sd-source"' in config
    assert 'show_doc(' not in config, 'the show_doc calls themselves must not show'
    # saved outputs are kept (the notebook was not re-run: this is its stored output), directives are gone
    assert "(32, 224, 'mean', 0.01)" in config or '(32, 224, &#39;mean&#39;, 0.01)' in config
    assert '#|' not in config and '#|' not in home
    # `#| hide`: the home page's hidden import is not shown; `#| echo: false`: its code is not, its output is
    assert 'from sparse3d.config import Config' not in home
    assert 'print(&#39;, &#39;.join' not in home and "print(', '.join" not in home
    assert 'n_epochs=500, batch_size=6' in home
    # links: between notebooks they are links between pages; to the published site, relative
    assert 'href="config.html"' in home
    assert 'sparse3d.github.io' not in re.sub(r'>[^<]*<', '><', home), 'links to the published site must be relative'
    # the generated reports are pages of their own, linked from the home page where the README links them
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    for name, page in build_docs.REPORTS.items():
        if (ROOT/name).exists() and f']({name})' in readme: assert f'href="{page}.html' in home, name
    # the README picture is copied into the site
    assert re.search(r'<img [^>]*src="_images/[^"]*views_hull\.png"', home)
    assert any((site/'_images').glob('*views_hull.png'))
    # offline: no script, style sheet, font or frame from the web, on any page
    assert build_docs.check_offline(site) == []
    # search: Sphinx's own index, with the API names in it
    assert (site/'search.html').exists()
    index = (site/'searchindex.js').read_text(encoding='utf-8')
    assert 'load_config' in index and 'config' in index


def test_every_notebook_is_a_page():
    "Every notebook of nbs/ and nbs/tutorials/ is staged as a page (without building the whole site)"
    nbs = build_docs.notebooks()
    names = {build_docs.page_name(p) for p in nbs}
    assert {'index', 'config', 'visualize'} <= names
    assert {p.stem for p in (build_docs.NBS/'tutorials').glob('*.ipynb')} <= {p.stem for p in nbs}
    assert len(names) == len(nbs), 'two notebooks would become the same page'


# --- serving and driving a browser ---------------------------------------------------------------------------

def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_http(url, proc, timeout=60):
    "Wait until `url` answers (or `proc` died)"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f'the server exited ({proc.returncode}) before answering {url}')
        try:
            with urllib.request.urlopen(url, timeout=2): return
        except Exception: time.sleep(0.3)
    raise TimeoutError(f'{url} did not answer within {timeout} s')


def stop(proc, timeout=15):
    "Stop a server this test started (its whole process group: a kernel too), politely, then not"
    if proc.poll() is not None: return
    with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGTERM)
    try: proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def serve(folder):
    "`python -m http.server` on a free loopback port over `folder`; its base URL"
    port = free_port()
    proc = subprocess.Popen([PY, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory', str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f'http://127.0.0.1:{port}/'
        wait_http(url, proc, 20)
        yield url
    finally: stop(proc)


@pytest.fixture
def browser(tmp_path):
    "A fresh headless Chromium (Playwright, Debian's binary); requests leaving loopback are refused and recorded"
    sync_api = pytest.importorskip('playwright.sync_api',
                                   reason='Playwright is not installed (PyPI `playwright`; the browser is '
                                   "Debian's /usr/bin/chromium, so no `playwright install` is needed)")
    if not CHROMIUM.exists(): pytest.skip(f'no Chromium at {CHROMIUM} (apt-get install chromium)')
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path/'profile'), executable_path=str(CHROMIUM),
                                                   headless=True,
                                                   args=ARGS, viewport=dict(width=1280, height=900))
        ctx.outside = []
        def block(route):
            ctx.outside.append(route.request.url)
            route.abort()
        ctx.route(re.compile(r'^(https?|wss?)://(?!127\.0\.0\.1[:/]|localhost[:/])'), block)
        try: yield ctx
        finally: ctx.close()


def watch(page):
    "Console errors and uncaught exceptions of `page`, as a list that fills up"
    errors = []
    page.on('console', lambda m: errors.append(f'console.{m.type}: {m.text}') if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(f'pageerror: {e}'))
    return errors


def drawn_share(png, background=255, tol=24) -> float:
    "Share of the pixels of a screenshot that are not the (white) background"
    from PIL import Image
    a = np.asarray(Image.open(png).convert('RGB')).astype(int)
    return float((np.abs(a - background).max(-1) > tol).mean())


def poll_pixels(shoot, png, want=0.03, tries=60, pause=250, page=None):
    "Screenshot with `shoot(path)` until more than `want` of it is drawn (SwiftShader takes a moment); the last share"
    share = 0.0
    for _ in range(tries):
        shoot(str(png))
        share = drawn_share(png)
        if share > want: break
        if page is not None: page.wait_for_timeout(pause)
        else: time.sleep(pause / 1000)
    return share


@pytest.mark.browser
def test_home_and_api_page_render(small_site, browser, tmp_path):
    site, _ = small_site
    with serve(site) as url:
        page = browser.new_page()
        errors = watch(page)
        page.goto(url + 'index.html', wait_until='load')
        assert page.title().startswith('sparse3d')
        assert page.locator('h1').first.inner_text().strip().startswith('sparse3d')
        assert page.locator('img[src*="views_hull"]').evaluate('img => img.complete && img.naturalWidth > 0')
        page.screenshot(path=str(tmp_path/'home.png'))
        page.click('a.reference.internal[href="config.html"] >> nth=0')
        page.wait_for_url('**/config.html')
        heading = page.locator('#load_config ~ h3, h3:has-text("load_config")').first
        heading.wait_for(state='visible', timeout=10_000)
        assert page.locator('a.sd-source').count() > 3, 'the [source] links of the API sections'
        assert page.locator('.cell_output').count() > 3, 'saved outputs of the examples'
        page.screenshot(path=str(tmp_path/'config.png'))
    assert not errors, errors
    assert not browser.outside, f'the pages asked the web for {browser.outside}'


@pytest.mark.browser
def test_search_finds_an_api_function(small_site, browser):
    site, _ = small_site
    with serve(site) as url:
        page = browser.new_page()
        errors = watch(page)
        page.goto(url + 'search.html?q=load_config', wait_until='load')
        hit = page.locator('#search-results a[href*="config.html"]').first
        hit.wait_for(state='attached', timeout=30_000)
        assert page.locator('#search-results li').count() >= 1
    assert not errors, errors
    assert not browser.outside, browser.outside


@pytest.mark.browser
def test_k3d_snapshot_in_tutorial_draws_voxels(site_with_snapshot, browser, tmp_path):
    site, info = site_with_snapshot
    assert info['snapshots'] == ['chair_hull'] and (site/'_static'/'k3d'/'chair_hull.html').exists()
    with serve(site) as url:
        page = browser.new_page()
        errors = watch(page)
        page.goto(url + 'tutorials/inspect_model.html', wait_until='load')
        frame_el = page.locator('div.k3d-snapshot iframe')
        frame_el.scroll_into_view_if_needed()                       # the iframe loads lazily
        frame = frame_el.element_handle().content_frame()
        frame.wait_for_load_state('load', timeout=60_000)
        frame.wait_for_function('() => window.K3DInstance !== undefined', timeout=60_000)
        frame.evaluate('() => Promise.resolve(window.K3DInstance).then(() => new Promise('
                       'r => requestAnimationFrame(() => requestAnimationFrame(r))))')
        shot = tmp_path/'snapshot.png'
        share = poll_pixels(lambda p: frame_el.screenshot(path=p), shot, page=page)
    assert share > 0.03, f'only {share:.2%} of the embedded snapshot is not background: no voxels drawn ({shot})'
    assert not errors, errors
    assert not browser.outside, browser.outside


TINY_NOTEBOOK = {
    'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'k3d-live', 'metadata': {}, 'outputs': [],
               'source': [
        'import numpy as np\n',
        'from sparse3d.viz import show_voxels\n',
        'g = np.zeros((16, 16, 16), np.float32)\n',
        'g[3:13, 5:8, 3:13] = 1; g[3:5, :5, 3:5] = g[11:13, :5, 3:5] = g[3:5, :5, 11:13] = g[11:13, :5, 11:13] = 1\n',
        'g[3:13, 8:15, 3:5] = 1\n',
        'show_voxels(g, menu_visibility=False, axes_helper=0)']}],
    'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
    'nbformat': 4, 'nbformat_minor': 5}


def dismiss_dialogs(page, seconds=6):
    "Dismiss (never accept: 'Build' would rebuild JupyterLab) the dialogs JupyterLab may open at start; their texts"
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        d = page.locator('.jp-Dialog')
        if d.count():
            seen.append(d.first.inner_text()[:200])
            reject = d.first.locator('.jp-Dialog-button.jp-mod-reject')
            if reject.count(): reject.first.click()
            else: page.keyboard.press('Escape')
        page.wait_for_timeout(400)
    return seen


@pytest.mark.browser
@pytest.mark.timeout(420)
def test_jupyterlab_live_k3d_widget_draws(browser, tmp_path):
    "JupyterLab on loopback runs a cell whose live k3d widget (show_voxels) draws voxels"
    jupyter = Path(PY).parent/'jupyter'
    if not jupyter.exists(): pytest.skip(f'no {jupyter} (pip install jupyterlab)')
    work = tmp_path/'lab'
    work.mkdir()
    (work/'tiny.ipynb').write_text(json.dumps(TINY_NOTEBOOK), encoding='utf-8')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime'),
           'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path/'workspaces'),
           'JUPYTERLAB_SETTINGS_DIR': str(tmp_path/'settings'), 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    cmd = [str(jupyter), 'lab', '--no-browser', '--allow-root', f'--port={port}', '--ServerApp.ip=127.0.0.1',
           f'--ServerApp.token={token}', '--ServerApp.port_retries=0', f'--ServerApp.root_dir={work}',
           '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    shot = tmp_path/'widget.png'
    try:
        wait_http(f'http://127.0.0.1:{port}/api/status?token={token}', proc, 90)
        page = browser.new_page()
        errors = watch(page)
        page.goto(f'http://127.0.0.1:{port}/lab/tree/tiny.ipynb?token={token}', wait_until='load')
        page.locator('.jp-Notebook .jp-Cell').first.wait_for(state='visible', timeout=120_000)
        dismiss_dialogs(page)
        page.locator('.jp-Notebook .jp-Cell .jp-InputArea-editor').first.click()
        page.keyboard.press('Shift+Enter')
        canvas = page.locator('.jp-OutputArea-output canvas').first
        canvas.wait_for(state='attached', timeout=120_000)
        out = page.locator('.jp-Cell .jp-OutputArea-output').first
        out.scroll_into_view_if_needed()
        share = poll_pixels(lambda p: out.screenshot(path=p), shot, tries=80, page=page)
        page.screenshot(path=str(tmp_path/'lab.png'))
        lab_errors = [e for e in errors if 'favicon' not in e]
    finally:
        stop(proc)
        log.close()
    assert share > 0.03, (f'only {share:.2%} of the widget output is not background: the k3d widget drew no voxels '
                          f'({shot}); '
                          f'lab log: {(tmp_path/"lab.log").read_text()[-1500:]}')
    assert not browser.outside, f'JupyterLab asked the web for {browser.outside}'
    assert not [e for e in lab_errors if 'k3d' in e.lower() or 'widget' in e.lower()], lab_errors
