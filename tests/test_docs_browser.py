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
  a tutorial draws voxels (pixels). (JupyterLab, with its live k3d widgets, is tests/test_lab_browser.py.)

Every server is started and stopped by its test, within a bounded time. Tests skip, saying why, when
Playwright or Chromium is missing (`make setup` installs both: Playwright from PyPI, `chromium` with apt).
"""
import contextlib, json, os, re, signal, socket, subprocess, sys, time, urllib.request
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
    "Home page, Config chapter, and the tutorial and the chapter embedding k3d snapshots, built into a temporary folder"
    return build_site(tmp_path_factory.mktemp('docs_k3d'), '00_config', '03_inspect_model', '10_visualize')


def test_page_names_follow_nbdev():
    "Pages are named as nbdev's symbol index links to them"
    test = lambda p: build_docs.page_name(build_docs.NBS/p)
    assert test('00_config.ipynb') == 'config'
    assert test('10_visualize.ipynb') == 'visualize'
    assert test('tutorials/01_train_synthetic.ipynb') == 'tutorials/train_synthetic'
    assert test('index.ipynb') == 'index'


def test_building_runs_no_example_code():
    "For show_doc, a cell mixing imports with other code runs only its imports: no training or rendering at build time"
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
    # links to the published site are made relative where this (partial) build has the page; the others stay absolute
    published = build_docs.site_url(build_docs.settings())
    for page in ('index.html', 'config.html'):
        for href in re.findall(r'href="' + re.escape(published) + r'([^"#]*)', (site/page).read_text(encoding='utf-8')):
            assert not (site/(href or 'index.html')).exists(), f'{page}: a link to the published {href} is not relative'
    # neither the site nor the repository is published: links to files of the repository (the [source] links of the
    # API sections, notebooks this partial build lacks) lead to the file in this checkout, relative to the page
    repo = build_docs.settings()['git_url']
    for page in ('index.html', 'config.html'):
        html = (site/page).read_text(encoding='utf-8')
        assert repo not in html, f'{page}: a link to the unpublished repository {repo}'
    sources = re.findall(r'<a href="([^"]*)" class="sd-source"', config)
    assert sources and all((site/s.split('#')[0]).resolve() == ROOT/'sparse3d'/'config.py' for s in sources), sources
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
    # every link between pages leads to a page, and to an anchor of it; no id twice on a page (the search page
    # took an empty nbdev anchor for the section of the same id, and failed on it)
    assert build_docs.check_links(site) == []
    for page in info['pages']:
        ids = re.findall(r'\bid="([^"]+)"', (site/page).read_text(encoding='utf-8'))
        assert len(ids) == len(set(ids)), f'{page}: ids twice: {sorted({i for i in ids if ids.count(i) > 1})}'
    # nbdev's anchors for what has no show_doc (private helpers): config.html#_read_yaml
    assert 'id="_read_yaml"' in config
    # tables fit (tools/docs/_static/sparse3d.css): FAULTS.md's long test names may break after _, its rows carry
    # their header labels for the phone layout; the home page's module names stay whole
    if (ROOT/'FAULTS.md').exists():
        faults = (site/'faults_report.html').read_text(encoding='utf-8')
        assert '<table class="docutils stack' in faults and 'data-label="Test"' in faults
        assert re.search(r'<code class="docutils literal[^"]* long"[^>]*><span class="pre">test_<wbr>\w+_<wbr>', faults)
    assert '<span class="pre">sparse3d.config</span>' in home
    # pictures carry their size, so the page does not move while they load (and links to anchors land)
    assert re.search(r'<img width="\d+" height="\d+" [^>]*views_hull\.png"', home)


def test_anchors_for_what_show_doc_skips():
    "nbdev links `page.html#name` and `#class.method`: the build knows every name a cell defines, @patch methods too"
    src = ('class Camera:\n    def project(self, x): ...\n    @property\n    def center(self): ...\n'
           '@patch\ndef forward(self: VAEGAN, x): ...\n@patch(as_prop=True)\ndef both(self: A|B): ...\n'
           'def _open_image(p): ...\nCOLORS = {}\n%time x = 1\n')
    assert build_docs.defined_anchors(src) == ['camera', 'camera.project', 'camera.center', 'vaegan.forward', 'a.both',
                                               'b.both', '_open_image']
    assert build_docs.defined_anchors('def broken(:') == []
    md = lambda text: dict(cell_type='markdown', metadata={}, source=text)
    cells = [md('# Page\n'), dict(md(''), anchors_=['camera', 'camera.project', '_open_image', 'load_config']),
             md('<a id="load_config" class="sd-anchor"></a>\n\n### load_config\n'), md('### Camera\n')]
    build_docs._anchor_missing(cells)
    assert [c['source'] for c in cells] == [
        '# Page\n', '<a id="_open_image" class="sd-anchor"></a>',                # where the code was: no heading has it
        '<a id="load_config" class="sd-anchor"></a>\n\n### load_config\n',       # show_doc's own anchor: kept, once
        '<a id="camera.project" class="sd-anchor"></a>\n\n### Camera\n'], cells  # a method: at its class heading


def test_link_check_finds_missing_pages_and_anchors(tmp_path):
    "The link check reports a missing page and a missing anchor, and nothing else (it can fail)"
    (tmp_path/'sub').mkdir()
    (tmp_path/'a.html').write_text('<a href="b.html#there">ok</a><a href="b.html#gone">x</a><a href="sub/c.html">x</a>'
                                   '<a href="#top">ok</a><p id="top"></p><a href="https://example.org/#x">web</a>')
    (tmp_path/'b.html').write_text('<section id="there"></section><a href="a.html#top">ok</a>')
    (tmp_path/'sub'/'d.html').write_text('<a href="../b.html#there">ok</a><a href="../a.html#nope">x</a>')
    assert sorted(build_docs.check_links(tmp_path)) == [
        'a.html: b.html#gone (no anchor #gone on b.html)', 'a.html: sub/c.html (no such file)',
        'sub/d.html: ../a.html#nope (no anchor #nope on a.html)']


def test_tables_are_marked_up_to_fit():
    "A table of 3+ columns gets its header labels on its cells (the phone layout) and break points in long names"
    code = '<code class="docutils literal notranslate"><span class="pre">{}</span></code>'
    table = ('<table class="docutils align-default"><thead><tr><th class="head"><p>Area</p></th>'
             '<th class="head"><p>What</p></th><th class="head"><p>Test</p></th></tr></thead>'
             '<tbody><tr><td><p>Disk</p></td><td><p>a/long/run/of/words/without/spaces</p></td><td><p>'
             + code.format('test_disk_full_keeps_checkpoint') + ' ' + code.format('sparse3d.config') +
             '</p></td></tr></tbody></table>')
    out = build_docs._polish_table(table)
    assert out.startswith('<table class="docutils stack align-default">')
    assert re.findall(r'data-label="([^"]*)"', out) == ['Area', 'What', 'Test']
    assert '<span class="pre">test_<wbr>disk_<wbr>full_<wbr>keeps_<wbr>checkpoint</span>' in out
    assert 'class="docutils literal notranslate long"' in out
    assert '<span class="pre">sparse3d.config</span>' in out                     # short names stay whole
    assert 'a/<wbr>long/<wbr>run/<wbr>of/<wbr>words/<wbr>without/<wbr>spaces' in out
    two = ('<table class="docutils"><thead><tr><th>a</th><th>b</th></tr></thead>'
           '<tbody><tr><td>1</td><td>2</td></tr></tbody></table>')
    assert build_docs._polish_table(two) == two                                 # two columns fit as they are


def test_every_notebook_is_a_page():
    "Every notebook of nbs/ and of its sections (explanations/, tutorials/) is staged as a page, without building"
    nbs = build_docs.notebooks()
    names = {build_docs.page_name(p) for p in nbs}
    assert {'index', 'config', 'visualize', 'explanations/design'} <= names, names
    for section in build_docs.SECTIONS:
        assert {p.stem for p in (build_docs.NBS/section).glob('*.ipynb')} <= {p.stem for p in nbs}, section
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
    sync_api = pytest.importorskip('playwright.sync_api', reason='Playwright is not installed (PyPI `playwright`; the '
                                   "browser is Debian's /usr/bin/chromium, so no `playwright install` is needed)")
    if not CHROMIUM.exists(): pytest.skip(f'no Chromium at {CHROMIUM} (apt-get install chromium)')
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path/'profile'), executable_path=str(CHROMIUM),
                                                   headless=True, args=ARGS, viewport=dict(width=1280, height=900))
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
    "Screenshot with `shoot(path)` until more than `want` of it is drawn (SwiftShader can be slow); the last share"
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
@pytest.mark.parametrize('query', ['load_config', 'ConfigError', 'Config', 'atomic write'])
def test_search_finds_api_names_without_errors(small_site, browser, query):
    "Search finds the API and logs no error (a class's section and an nbdev anchor sharing an id broke its summaries)"
    site, _ = small_site
    with serve(site) as url:
        page = browser.new_page()
        errors = watch(page)
        page.goto(url + f'search.html?q={query}', wait_until='load')
        hit = page.locator('#search-results a[href*="config.html"]').first
        hit.wait_for(state='attached', timeout=30_000)
        page.locator('#search-results p.context').first.wait_for(state='attached', timeout=30_000)   # summaries came
        page.wait_for_timeout(500)
        assert page.locator('#search-results li').count() >= 1
    assert not errors, errors
    assert not browser.outside, browser.outside


LAYOUT = """() => {
  const article = document.querySelector('article[role=main]');
  const tables = [...article.querySelectorAll('table')].filter(t => {      // its box would scroll sideways
    const box = t.closest('.table-wrapper') || t.parentElement;
    return box.scrollWidth > box.clientWidth + 1 || t.offsetWidth > article.clientWidth + 12;
  }).map(t => (t.rows[0] ? t.rows[0].innerText : t.innerText).replace(/\\s+/g, ' ').slice(0, 60));
  const pres = [...article.querySelectorAll('pre')].filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.innerText.split('\\n')[0].slice(0, 60));
  return {tables, pres, page: document.documentElement.scrollWidth - window.innerWidth};
}"""


@pytest.mark.browser
@pytest.mark.parametrize('width', [1280, 390])
def test_tables_and_code_fit_the_page(small_site, browser, tmp_path, width):
    "At a desktop width and a phone's, no table is wider than the text column and no code scrolls sideways"
    site, info = small_site
    with serve(site) as url:
        page = browser.new_page()
        page.set_viewport_size(dict(width=width, height=900))
        errors = watch(page)
        bad = {}
        for name in info['pages']:
            page.goto(url + name, wait_until='load')
            found = page.evaluate(LAYOUT)
            if found['tables'] or found['pres'] or found['page'] > 0: bad[name] = found
            table = page.locator('article table').first
            if table.count():
                table.scroll_into_view_if_needed()
                page.screenshot(path=str(tmp_path/f'{width}_{name.replace("/", "_")}.png'))
    assert not bad, f'at {width} px these overflow: {bad} (screenshots in {tmp_path})'
    assert not errors, errors


@pytest.mark.browser
def test_links_to_symbols_land_on_their_anchor(small_site, browser):
    "nbdev's links to a symbol without show_doc (a private helper) and with one scroll to it, not to the top"
    site, _ = small_site
    with serve(site) as url:
        page = browser.new_page()
        for anchor in ('_read_yaml', 'load_config'):
            page.goto(url + f'config.html#{anchor}', wait_until='load')
            top = '(a) => document.getElementById(a).getBoundingClientRect().top'
            try: page.wait_for_function(f'(a) => ({top})(a) >= 0 && ({top})(a) < 200', arg=anchor, timeout=15_000)
            except Exception:                                   # (the page scrolls smoothly: it takes a moment)
                pytest.fail(f'#{anchor} stays {page.evaluate(top, anchor):.0f} px below the top of the window')


@pytest.mark.browser
@pytest.mark.parametrize(('page_name', 'snapshot'), [('tutorials/inspect_model.html', 'chair_hull'),
                                                     ('visualize.html', 'toy_chair')])
def test_k3d_snapshot_in_page_draws_voxels(site_with_snapshot, browser, tmp_path, page_name, snapshot):
    site, info = site_with_snapshot
    assert info['snapshots'] == ['chair_hull', 'toy_chair'], info['snapshots']
    html = (site/'_static'/'k3d'/f'{snapshot}.html').read_text(encoding='utf-8')
    # titled as the frame is, with the site's icon inlined (no "K3D snapshot viewer - <time>", no missing favicon)
    assert re.findall(r'<title>(.*?)</title>', html) == [f'{build_docs.SNAPSHOTS[snapshot][1]} - sparse3d']
    assert re.search(r'<link rel="icon" href="data:image/svg\+xml;base64,', html)
    with serve(site) as url:
        page = browser.new_page()
        errors = watch(page)
        page.goto(url + page_name, wait_until='load')
        frame_el = page.locator(f'div.k3d-snapshot iframe[src$="{snapshot}.html"]')
        frame_el.scroll_into_view_if_needed()                       # the iframe loads lazily
        frame = frame_el.element_handle().content_frame()
        frame.wait_for_load_state('load', timeout=60_000)
        frame.wait_for_function('() => window.K3DInstance !== undefined', timeout=60_000)
        frame.evaluate('() => Promise.resolve(window.K3DInstance).then(() => new Promise('
                       'r => requestAnimationFrame(() => requestAnimationFrame(r))))')
        shot = tmp_path/'snapshot.png'
        share = poll_pixels(lambda p: frame_el.screenshot(path=p), shot, page=page)
        page.screenshot(path=str(tmp_path/'page.png'))
    assert share > 0.03, f'only {share:.2%} of the embedded snapshot is not background: no voxels drawn ({shot})'
    assert not errors, errors
    assert not browser.outside, browser.outside
