"""A k3d snapshot written by sparse3d draws its voxels in a real browser, offline.

`sparse3d.viz.save_snapshot` writes k3d's self-contained HTML (k3d's JavaScript and the data inlined).
Here headless Chromium (Debian's /usr/bin/chromium, software WebGL through SwiftShader) opens one, with
the network cut off, and a screenshot must show the voxels: a good share of the pixels not the
background, in the colours of the three labels. Checking only that the file exists would miss the
usual failures: a blank page from a CDN that is out of reach, a WebGL error, a camera looking away.

Two drivers: Playwright (PyPI), which can wait for k3d to finish and can block every web request; and,
so the check also runs where Playwright is not installed, Chromium's own `--screenshot` mode. Each
skips, saying why, when what it needs is missing.
"""
import os, re, subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path('/usr/bin/chromium')
ARGS = ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader']
WIDTH, HEIGHT = 800, 500


def chair_grid(D=32):
    "A blocky chair [x, y, z] (y up, front +z): seat, four legs, a back at low z"
    g = np.zeros((D, D, D), bool)
    g[8:24, 12:15, 8:24] = True
    for x in (8, 22):
        for z in (8, 22): g[x:x + 2, 0:12, z:z + 2] = True
    g[8:24, 15:30, 8:10] = True
    return g


@pytest.fixture
def snapshot(tmp_path):
    "Snapshot of a prediction against the chair: true positives, an invented armrest, a missed leg; no menu or axes"
    from sparse3d.viz import voxel_plot, save_snapshot
    gt = chair_grid()
    pred = gt.astype(np.float32)
    pred[22:24, :12, 22:24] = 0          # a missed leg
    pred[8:24, 15:18, 20:24] = 1         # an armrest that is not there
    plot = voxel_plot(pred, gt, menu_visibility=False, axes_helper=0)
    return save_snapshot(plot, tmp_path/'chair.html')


def pixel_shares(png) -> dict:
    "Shares of the screenshot's pixels: not background (white), and in each label's colour family"
    from PIL import Image
    a = np.asarray(Image.open(png).convert('RGB')).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    drawn = (np.abs(a - 255).max(-1) > 24)
    n = drawn.size
    return dict(drawn=drawn.sum() / n,
                tp=(drawn & (b > r + 15) & (b >= g)).sum() / n,               # muted blue
                fp=(drawn & (r > b + 80) & (g > b + 30)).sum() / n,           # orange
                fn=(drawn & (r > g + 25) & (b > g + 10)).sum() / n)           # reddish purple


def check_voxels_drawn(png):
    s = pixel_shares(png)
    assert s['drawn'] > 0.03, f"only {s['drawn']:.2%} of the screenshot is not background: no voxels drawn ({png})"
    assert s['tp'] > 0.01, f"true-positive colour on {s['tp']:.2%} of the screenshot ({png})"
    assert s['fp'] > 0.002, f"false-positive colour on {s['fp']:.2%} of the screenshot ({png})"
    assert s['fn'] > 0.0005, f"false-negative colour on {s['fn']:.2%} of the screenshot ({png})"
    return s


def test_snapshot_is_self_contained(snapshot):
    "No browser needed: the page loads nothing from the web (runs in `make test` too)"
    html = snapshot.read_text(encoding='utf-8')
    assert re.search(r'<(script|link)[^>]*(src|href)\s*=\s*["\']?(https?:)?//', html, re.I) is None
    assert 'unpkg' not in html and 'cdnjs' not in html


@pytest.mark.browser
def test_snapshot_draws_voxels_playwright(snapshot, tmp_path):
    sync_api = pytest.importorskip('playwright.sync_api',
                                   reason='Playwright is not installed (PyPI `playwright`; the browser is '
                                   'Debian\'s /usr/bin/chromium, so no `playwright install` is needed)')
    if not CHROMIUM.exists(): pytest.skip(f'no Chromium at {CHROMIUM} (apt-get install chromium)')
    requests, errors = [], []
    def block(route):
        requests.append(route.request.url)
        route.abort()
    shot, shares = tmp_path/'chair_playwright.png', None
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path/'profile'), executable_path=str(CHROMIUM),
                                                   headless=True,
                                                   args=ARGS, viewport=dict(width=WIDTH, height=HEIGHT))
        try:
            page = ctx.new_page()
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.route(re.compile(r'^(https?|wss?)://'), block)            # offline: anything from the web fails
            page.goto(snapshot.as_uri())
            page.wait_for_function('() => window.K3DInstance !== undefined', timeout=60_000)
            # K3DInstance is the promise of the loaded plot; then two frames for the first draw
            page.evaluate('() => Promise.resolve(window.K3DInstance).then(() => new Promise('
                          'r => requestAnimationFrame(() => requestAnimationFrame(r))))')
            page.wait_for_selector('#canvasTarget canvas', state='attached')
            # SwiftShader may take a moment: poll the pixels
            for _ in range(40):
                page.screenshot(path=str(shot))
                shares = pixel_shares(shot)
                if shares['drawn'] > 0.03: break
                page.wait_for_timeout(250)
        finally:
            ctx.close()
    assert not errors, f'JavaScript errors in the snapshot: {errors}'
    assert not requests, f'the snapshot asked the web for {requests}'
    check_voxels_drawn(shot)


@pytest.mark.browser
def test_snapshot_draws_voxels_chromium_cli(snapshot, tmp_path):
    if not CHROMIUM.exists(): pytest.skip(f'no Chromium at {CHROMIUM} (apt-get install chromium)')
    shot = tmp_path/'chair_cli.png'
    # --virtual-time-budget lets the page run (scripts, timers, frames) before the picture is taken;
    # with no network access needed, the page is drawn from the file alone. Chromium cannot wait for k3d's first
    # frame, and on a busy machine SwiftShader had not drawn it within 20 s once (a white page): a longer budget
    # is tried before the picture is judged
    env = {**os.environ, 'HOME': str(tmp_path)}                        # the profile and caches stay in tmp_path
    for budget in (20_000, 60_000):
        cmd = [str(CHROMIUM), *ARGS, f'--user-data-dir={tmp_path/"profile"}', f'--window-size={WIDTH},{HEIGHT}',
               '--hide-scrollbars', f'--virtual-time-budget={budget}', f'--screenshot={shot}', snapshot.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert shot.exists(), f'Chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-2000:]}'
        if pixel_shares(shot)['drawn'] > 0.03: break
    check_voxels_drawn(shot)
