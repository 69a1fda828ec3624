"""`report.html` of `sparse3d_test` in a real browser, offline.

Headless Chromium (Debian's /usr/bin/chromium, software WebGL through SwiftShader) driven by Playwright opens
the report with every web request blocked. The page must load without a console error or a failed request, show
its results table (or, for photos, its predictions table) and its figures, and its <iframe> must draw the k3d
snapshot of a prediction: a screenshot of the frame must be mostly not background. A report whose 3D view needs
a CDN, or whose frame stays blank, fails here, not on a user's machine. The 3D view's buttons (prediction, ground
truth, overlay) and threshold slider are used as a user would, by clicks and keys, and each state is checked in the
pixels: the colours of what it shows, and more cells drawn at a lower threshold. On a phone's width (390 px) the page
must not be wider than the screen: its tables scroll inside it and long paths wrap.
"""
import re, subprocess, sys, os
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path('/usr/bin/chromium')
ARGS = ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader']
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


@pytest.fixture(scope='module')
def reports(tmp_path_factory):
    "The reports of a tiny pose model: on a processed root (views 1, 2, 4) and on a folder of four 200x150 photos"
    import torch
    from sparse3d.synthetic import render_dataset
    from sparse3d.preprocess import PreprocessSettings, preprocess_category, split_and_pack
    from sparse3d.config import load_config
    from sparse3d.train import fit
    from sparse3d.testing import write_photo_folder
    d = tmp_path_factory.mktemp('report')
    render_dataset(d/'co3d', n_sequences=6, n_frames=4, image_size=64, seed=2, workers=1, progress=False)
    preprocess_category(d/'co3d', d/'proc', 'chair', PreprocessSettings(image_size=64, cube_len=32), workers=1,
                        progress=False)
    split_and_pack(d/'proc', 'chair', None, seed=0, val_frac=0.2, test_frac=0.3, progress=False)
    torch.set_num_threads(2)
    cfg = load_config(None, image_size=64, batch_size=4, num_views=2, z_size=16, n_epochs=1, workers=0, device='cpu')
    fit(cfg, d/'proc', d/'run', progress=False)
    write_photo_folder(d/'photos', n_views=4, image_size=(150, 200), seed=4)
    ck = d/'run'/'checkpoints'/'best.pt'
    for test_dir, out, extra in ((d/'proc', d/'eval', ['--views', '1,2,4']), (d/'photos', d/'eval_photos', [])):
        p = subprocess.run([str(BIN/'sparse3d_test'), '--model_path', str(ck), '--test_dir', str(test_dir),
                            '--output_dir', str(out), '--device', 'cpu', *extra],
                           capture_output=True, text=True, env=ENV, timeout=600)
        assert p.returncode == 0, p.stderr
    return dict(processed=d/'eval'/'report.html', photos=d/'eval_photos'/'report.html')


def drawn_share(png, top=0) -> float:
    "Share of the screenshot's pixels (below row `top`) that are not the white background"
    return colour_shares(png, top)['drawn']


def colour_shares(png, top=0) -> dict:
    "Shares of the pixels below row `top`: not background, and in the colour family of each layer of the 3D view"
    from PIL import Image
    a = np.asarray(Image.open(png).convert('RGB')).astype(int)[top:]
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    drawn = np.abs(a - 255).max(-1) > 24
    grey = drawn & (a.max(-1) - a.min(-1) < 40)                                   # ground truth #8E9AA6, shaded
    blue = drawn & (b > r + 45)                                       # prediction #4C8BBF, true pos. #7FA7CF
    orange = drawn & (r > b + 80) & (g > b + 30)                                  # false positive #E69F00
    purple = drawn & (r > g + 25) & (b > g + 10)                                  # false negative #CC79A7
    masks = dict(drawn=drawn, grey=grey, blue=blue, orange=orange, purple=purple)
    return {k: float(v.mean()) for k, v in masks.items()}


def shoot(page, iframe, frame, path, want=0.0) -> dict:
    "Colour shares of a screenshot of the 3D view below its controls, taken when it shows more than `want` (or late)"
    frame.evaluate('() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))')   # drawn anew
    top = int(frame.evaluate("() => Math.ceil(document.getElementById('s3d-controls').getBoundingClientRect().bottom)"))
    for _ in range(40):                                                           # SwiftShader may take a moment
        iframe.screenshot(path=str(path))
        shares = colour_shares(path, top + 2)
        if shares['drawn'] > want: break
        page.wait_for_timeout(250)
    return shares


def view_state(frame) -> dict:
    "What the 3D view says it shows: mode, threshold, the legend's text, and which button is pressed"
    return frame.evaluate("""() => ({mode: document.body.dataset.mode,
        threshold: Number(document.body.dataset.threshold), legend: document.getElementById('s3d-legend').innerText,
        slider: document.querySelector('#s3d-threshold input').value,
        pressed: [...document.querySelectorAll('#s3d-modes button[aria-pressed=true]')].map(b => b.innerText)})""")


def cells(legend) -> int:
    "The cells a legend counts as predicted: the prediction's, or the true plus the false positives"
    found = re.findall(r'(?:prediction: |positive )(\d+)', legend)
    assert found, f'no cell counts in the legend {legend!r}'
    return sum(int(n) for n in found)


@pytest.mark.browser
@pytest.mark.parametrize('kind', ['processed', 'photos'])
def test_report_in_chromium(reports, kind, tmp_path):
    sync_api = pytest.importorskip('playwright.sync_api', reason='Playwright is not installed (PyPI `playwright`)')
    if not CHROMIUM.exists(): pytest.skip(f'no Chromium at {CHROMIUM} (apt-get install chromium)')
    report = reports[kind]
    requests, errors, states, shares = [], [], {}, {}
    def block(route):
        requests.append(route.request.url)
        route.abort()
    shot, phone = tmp_path/'report.png', [0, 0]
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path/'profile'), executable_path=str(CHROMIUM),
                                                   headless=True, args=ARGS, viewport=dict(width=1200, height=900))
        try:
            page = ctx.new_page()
            page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
            page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
            page.on('requestfailed', lambda r: errors.append(f'failed request: {r.url}'))
            page.route(re.compile(r'^(https?|wss?)://'), block)              # offline: anything from the web fails
            page.goto(report.as_uri())
            page.wait_for_load_state('load')
            heads = page.locator('h2').all_inner_texts()
            table = page.locator('table.results' if kind == 'processed' else 'table').first
            assert table.is_visible()
            if kind == 'processed':
                assert heads[:4] == ['Results', 'IoU against the number of views', 'Examples (2 views)', '3D view'], \
                    heads
                assert page.locator('table.results tbody tr').count() == 3              # views 1, 2, 4
                assert table.locator('th').all_inner_texts()[:5] == ['views', 'IoU ↑', 'F@1% ↑', 'F@2% ↑', 'Chamfer ↓']
            else:
                assert heads[:3] == ['Prediction', '3D view', 'Predictions'], heads
            imgs = page.locator('img')
            assert imgs.count() >= (2 if kind == 'processed' else 1)
            assert all(page.evaluate('(i) => i.complete && i.naturalWidth > 100', imgs.nth(k).element_handle())
                       for k in range(imgs.count()))                                 # the figures decoded
            iframe = page.locator('iframe')
            iframe.scroll_into_view_if_needed()
            frame = next(f for f in page.frames if f.url.endswith('prediction_3d.html'))
            frame.wait_for_function('() => window.K3DInstance !== undefined', timeout=60_000)
            frame.evaluate('() => Promise.resolve(window.K3DInstance).then(() => new Promise('
                           'r => requestAnimationFrame(() => requestAnimationFrame(r))))')
            frame.wait_for_selector('#canvasTarget canvas', state='attached')
            frame.wait_for_selector('#s3d-controls button', timeout=30_000)
            buttons = frame.locator('#s3d-modes button').all_inner_texts()
            states['start'] = view_state(frame)
            shares['start'] = shoot(page, iframe, frame, tmp_path/'frame_start.png', 0.01)
            for mode in buttons:                                             # every mode, by a click
                frame.locator('#s3d-modes button', has_text=mode).click()
                states[mode] = view_state(frame)
                shares[mode] = shoot(page, iframe, frame, tmp_path/f'frame_{mode}.png', 0.01)
            frame.locator('#s3d-modes button', has_text='prediction').click()
            slider = frame.locator('#s3d-threshold input')
            slider.focus()
            for key in ('Home', 'End'):                                      # the slider, by the keyboard
                slider.press(key)
                states[key] = view_state(frame)
                shares[key] = shoot(page, iframe, frame, tmp_path/f'frame_{key}.png')
            sweep = []
            for _ in range(int(slider.get_attribute('max')) + 1):            # every step, from the top down
                sweep.append(view_state(frame))
                slider.press('ArrowLeft')
            page.screenshot(path=str(shot), full_page=True)
            page.set_viewport_size(dict(width=390, height=844))                # a phone held upright
            page.wait_for_timeout(200)
            phone = page.evaluate('() => [document.documentElement.scrollWidth, window.innerWidth]')
            iframe.scroll_into_view_if_needed()
            iframe.screenshot(path=str(tmp_path/'frame_phone.png'))
            phone_controls = frame.evaluate("() => [document.getElementById('s3d-controls').scrollWidth, "
                                            "window.innerWidth]")
        finally:
            ctx.close()
    assert not errors, f'errors in the report: {errors}'
    assert not requests, f'the report asked the web for {requests}'
    modes = ['prediction', 'ground truth', 'overlay'] if kind == 'processed' else ['prediction']
    assert buttons == modes, buttons
    start = states['start']
    assert start['mode'] == modes[-1] and start['pressed'] == [modes[-1]], start
    report_threshold = float(re.search(r"the report's is ([0-9.]+)\)", report.read_text()).group(1))
    assert abs(start['threshold'] - report_threshold) < 1e-6, (start, report_threshold)
    for mode in modes:
        assert states[mode]['mode'] == mode and states[mode]['pressed'] == [mode], states[mode]
        s = shares[mode]
        assert s['drawn'] > 0.01, f'{mode}: only {s["drawn"]:.2%} of the 3D view is drawn ({tmp_path}/frame_{mode}.png)'
    if kind == 'processed':
        g, o = shares['ground truth'], shares['overlay']
        assert g['grey'] > 0.5 * g['drawn'] and g['orange'] < 0.001, f'ground truth not in grey: {g}'
        assert o['blue'] + o['orange'] + o['purple'] > 0.3 * o['drawn'], f'overlay not in its colours: {o}'
        assert re.fullmatch(r'■\s*ground truth: \d+ cells', states['ground truth']['legend']), states['ground truth']
        assert 'IoU' in states['overlay']['legend'], states['overlay']
    pr = shares['prediction']
    assert pr['blue'] > 0.5 * pr['drawn'] and pr['grey'] < 0.2 * pr['drawn'], f'prediction not in blue: {pr}'
    lo, hi = states['Home'], states['End']
    test_range = (min(0.1, report_threshold), max(0.9, report_threshold))         # every tenth, and the report's
    assert (lo['threshold'], hi['threshold']) == test_range, (lo, hi)
    assert cells(lo['legend']) >= cells(hi['legend']), (lo, hi)
    ts, ns = [st['threshold'] for st in sweep], [cells(st['legend']) for st in sweep]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == len(ts) and ts[-1] == lo['threshold'], ts
    assert ns == sorted(ns), f'cells at thresholds {ts}: {ns}, not more at a lower threshold'
    assert shares['Home']['drawn'] > 0.01, f'nothing drawn at the lowest threshold: {shares["Home"]} ({tmp_path})'
    if cells(lo['legend']) > cells(hi['legend']):                                 # more cells, more pixels
        assert shares['Home']['drawn'] > shares['End']['drawn'], (shares['Home'], shares['End'], lo, hi)
    assert phone[0] <= phone[1], f'on a {phone[1]} px wide phone the page is {phone[0]} px wide: it scrolls sideways'
    assert phone_controls[0] <= phone_controls[1], f'the 3D view\'s controls overflow on a phone: {phone_controls}'
    print(f'screenshots in {tmp_path}')
