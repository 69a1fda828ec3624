"""`sparse3d_results` as a user runs it (nbs/12_results.ipynb): `--write` fills the result markers of the notebooks
from the results JSON, `--check` passes when they agree and fails, naming the file and the marker, when a number
changed; a missing or broken results file is a clear error. Run through the console script's own entry
point run from a script, so the tests need no reinstall of the package."""
import json, sys

import pytest

from conftest import run_cli

ENTRY = "import sys\nfrom sparse3d.results import results_cli\nif __name__ == '__main__': sys.exit(results_cli())\n"


@pytest.fixture
def results(tmp_path):
    "Run sparse3d_results with arguments; a CompletedProcess"
    script = tmp_path/'sparse3d_results.py'
    script.write_text(ENTRY)
    return lambda *args, ok=True: run_cli(sys.executable, script, *args, ok=ok)


def project(root, iou=0.4512):
    "A project folder: one notebook with an inline and a multi-line result marker, and its results JSON"
    (root/'nbs').mkdir(parents=True)
    cell = dict(cell_type='markdown', id='0a1b2c3d', metadata={},
                source=["Mean IoU at 4 views: <!-- result: quality.unseen styles.model.4.iou:.3f -->?<!-- /result -->",
                        "\n", "\n", "<!-- result: quality.unseen styles.n -->\n", "(filled by `make results`)\n",
                        "<!-- /result -->"])
    nb = dict(cells=[cell], metadata={}, nbformat=4, nbformat_minor=5)
    (root/'nbs'/'index.ipynb').write_text(json.dumps(nb, indent=1, sort_keys=True) + '\n')
    (root/'BENCHMARKS.json').write_text(json.dumps({'quality': {'unseen styles': {'model': {'4': {'iou': iou}},
                                                                                  'n': 120}}}))
    return root


def last_line(p): return [ln for ln in p.stderr.splitlines() if ln.strip()][-1]


def test_write_then_check(tmp_path, results):
    root = project(tmp_path/'p')
    p = results('--check', '--root', root, '--output', '', ok=False)
    assert p.returncode == 1, p.stderr
    assert last_line(p).startswith('sparse3d_results: error: 2 results differ from '), p.stderr
    assert 'BENCHMARKS.json' in last_line(p), p.stderr
    assert "the first in nbs/index.ipynb at '<!-- result: quality.unseen styles.model.4.iou:.3f -->'" in last_line(p), \
        p.stderr
    assert 'run `make results` and commit' in last_line(p), p.stderr
    p = results('--write', '--root', root, '--output', '')
    assert '1 files updated: nbs/index.ipynb' in p.stdout, p.stdout
    src = ''.join(json.loads((root/'nbs'/'index.ipynb').read_text())['cells'][0]['source'])
    assert '-->0.451<!-- /result -->' in src and '-->\n120\n<!-- /result -->' in src, src
    results('--check', '--root', root, '--output', '')


def test_check_catches_a_changed_number(tmp_path, results):
    root = project(tmp_path/'p')
    results('--write', '--root', root, '--output', '')
    project(tmp_path/'q', iou=0.4612)
    (root/'BENCHMARKS.json').write_text((tmp_path/'q'/'BENCHMARKS.json').read_text())    # a new measurement
    p = results('--check', '--root', root, '--output', '', ok=False)
    assert p.returncode == 1, p.stderr
    assert "saw '0.451', expected '0.461'" in p.stderr, p.stderr
    assert 'sparse3d_results: error: 1 results differ' in last_line(p), p.stderr


def test_missing_results_with_markers_is_an_error(tmp_path, results):
    root = project(tmp_path/'p')
    (root/'BENCHMARKS.json').unlink()
    p = results('--check', '--root', root, ok=False)
    assert p.returncode == 2, p.stderr
    assert 'BENCHMARKS.json' in last_line(p) and 'not found, and 2 result markers need it' in last_line(p), p.stderr
    assert 'make bench' in last_line(p) and 'Traceback' not in p.stderr, p.stderr


def test_bad_usage_and_bad_json(tmp_path, results):
    root = project(tmp_path/'p')
    p = results('--root', root, ok=False)
    assert p.returncode == 2 and 'give one of --write' in last_line(p), p.stderr
    (root/'BENCHMARKS.json').write_text('{"quality": ')
    p = results('--check', '--root', root, ok=False)
    assert p.returncode == 2 and 'not valid JSON' in last_line(p), p.stderr
    p = results('--check', '--root', root, '--json_path', root/'nbs', ok=False)
    assert p.returncode == 2 and 'is a folder' in last_line(p), p.stderr
