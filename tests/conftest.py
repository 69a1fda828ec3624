"Shared pytest set-up: markers that match the notebooks' tst_flags (slow, browser, cuda), hypothesis profiles."
import os, subprocess, sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sparse3d.config import md_table

# --- hypothesis: the same cases on every run by default, fresh random ones on demand -------------------------------
# `sparse3d` (loaded here, so `make test`, `make faults` and CI use it): derandomized, so a failure is met again on
# the next run and on every machine with the same hypothesis version; no example database (the tree stays clean);
# a failure prints its example and the `@reproduce_failure` blob that replays it.
# `explore` (`make faults-explore`, or `pytest --hypothesis-profile explore`): random cases, and each fuzz test of
# tests/test_faults_inputs.py draws `EXPLORE_SCALE` times more of them. Turn what it finds into an `@example`.
FUZZ_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
               HealthCheck.filter_too_much]
EXPLORE_SCALE = 10
settings.register_profile('sparse3d', derandomize=True, database=None, print_blob=True, deadline=None,
                          suppress_health_check=FUZZ_HEALTH)
settings.register_profile('explore', derandomize=False, database=None, print_blob=True, deadline=None,
                          suppress_health_check=FUZZ_HEALTH)
settings.load_profile('sparse3d')


def examples_scale() -> int:
    "How many times its own number of examples a fuzz test draws: 1 in the reproducible profile, more when exploring"
    return 1 if settings.default.derandomize else EXPLORE_SCALE


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than a few seconds; run by `make test-all`')
    config.addinivalue_line('markers', 'browser: drives headless Chromium; run by `make test-all`')
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU')

def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='no CUDA GPU on this machine')
    for item in items:
        if 'cuda' in item.keywords: item.add_marker(skip)


# --- fault injection (tests/test_faults_*.py): the FAULTS.md table and the shared tiny dataset ---------------
# A test that injects a fault takes the `fault` fixture and describes what it tried:
#     fault.describe('Disk', 'disk full while writing a checkpoint', 'clear error, previous checkpoint kept')
#     fault.case()          # once per case tried (hypothesis examples, kill points, ...)
# `pytest tests/test_faults_*.py --faults-report FAULTS.md` (or SPARSE3D_FAULTS_REPORT=FAULTS.md) writes the
# table at the end of the run; without the option nothing is written, so `make test` leaves the tree clean.


FAULT_THEMES = ['Interruption', 'Disk', 'Inputs', 'Security', 'Numerics', 'Load']
_FAULTS = {}          # nodeid -> record


def pytest_addoption(parser):
    parser.addoption('--faults-report', metavar='PATH', default=os.environ.get('SPARSE3D_FAULTS_REPORT'),
                     help='write the table of faults injected by tests/test_faults_*.py (markdown) to PATH '
                          'at the end of the run (default: $SPARSE3D_FAULTS_REPORT; none: no file is written)')


class FaultRecord:
    "What one test injected, how many cases it tried, and (after the run) how it ended"
    def __init__(self, nodeid):
        self.nodeid, self.theme, self.what, self.expect = nodeid, '?', nodeid, ''
        self.cases, self.outcome, self.note = 0, None, ''
        self.slow, self.seconds, self.order = False, 0.0, len(_FAULTS)

    def describe(self, theme, what, expect='nothing lost, clear message'):
        assert theme in FAULT_THEMES, theme
        self.theme, self.what, self.expect = theme, what, expect
        return self

    def case(self, n=1):
        "Count `n` more cases (call it once per hypothesis example, kill, corrupted file, ...)"
        self.cases += n


@pytest.fixture
def fault(request):
    "The `FaultRecord` of this test, for the FAULTS.md table"
    rec = _FAULTS.setdefault(request.node.nodeid, FaultRecord(request.node.nodeid))
    rec.slow = request.node.get_closest_marker('slow') is not None
    return rec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    rec = _FAULTS.get(item.nodeid)
    if rec is None: return
    rec.seconds += rep.duration
    if rep.when == 'call' or rep.outcome != 'passed':
        if hasattr(rep, 'wasxfail'):
            rec.outcome = 'xpassed' if rep.outcome == 'passed' else 'xfailed'
            rec.note = rep.wasxfail
        elif rep.skipped:
            rec.outcome = 'skipped'
            rec.note = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        elif rep.outcome == 'failed' and rec.outcome != 'failed':
            rec.outcome = 'failed'
            rec.note = (rep.longreprtext or '').strip().splitlines()[-1][:200] if rep.longreprtext else ''
        elif rec.outcome is None:
            rec.outcome = rep.outcome


def faults_table(records, selection='') -> str:
    "The FAULTS.md text for the `FaultRecord`s of a run"
    order = {t: i for i, t in enumerate(FAULT_THEMES)}
    recs = sorted((r for r in records if r.outcome is not None), key=lambda r: (order.get(r.theme, 99), r.order))
    result = lambda r: {'passed': r.expect, 'xfailed': f"**known bug**: {r.note.removeprefix('reason: ')}",
                        'xpassed': f"{r.expect} (a known-bug marker is stale: remove it)",
                        'skipped': f"skipped: {r.note}", 'failed': f"**FAILED**: {r.note}"}.get(r.outcome, r.outcome)
    lines = ['# Faults survived, bad inputs tried', '',
             'Generated by the fault-injection suite (`tests/test_faults_*.py`); do not edit by hand. '
             'Regenerate it from a',
             'full run, slow tests included:', '',
             '```', '.venv/bin/python -m pytest -p no:dash tests/test_faults_*.py --faults-report FAULTS.md', '```', '',
             'Each row is one test: the fault it injects or the bad input it feeds, how many cases it tried '
             '(hypothesis',
             'examples, kill points, corrupted files, ...), and what the test asserts survived. Variants of one '
             'test that',
             'describe the same fault (parametrized cases) share a row.', '',
             *([f'This table comes from a partial run ({selection}).', ''] if selection else [])]
    rows = {}                                   # variants of a test with the same description and outcome: one row
    for r in recs:
        name = r.nodeid.split('::', 1)[-1].split('[')[0]
        row = rows.setdefault((r.theme, r.what, result(r), name, r.slow), dict(cases=0, n=0))
        row['cases'] += max(r.cases, 1); row['n'] += 1
    table = []
    for (theme, what, res, name, slow), row in rows.items():
        test = name + (f" ({row['n']} variants)" if row['n'] > 1 else '') + (' (slow)' if slow else '')
        table.append((theme, what, row['cases'], res, f"`{test}`"))
    header = ['Area', 'Fault or bad input', 'Cases', 'Result', 'Test']
    lines.append(md_table(header, table, align=['', '', 'r', '', '']).rstrip('\n'))
    n = {k: sum(r.outcome == k for r in recs) for k in ('passed', 'xfailed', 'failed', 'skipped', 'xpassed')}
    outcomes = ', '.join(f"{v} {k}" for k, v in n.items() if v)
    lines += ['', f"{len(recs)} tests, {sum(max(r.cases, 1) for r in recs)} cases: {outcomes}.", '']
    return '\n'.join(lines)


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption('--faults-report')
    if not path or not _FAULTS: return
    markexpr = session.config.getoption('markexpr', '') or ''
    selection = f'-m "{markexpr}"' if 'slow' in markexpr else ''
    Path(path).write_text(faults_table(_FAULTS.values(), selection), encoding='utf-8')
    tr = session.config.pluginmanager.get_plugin('terminalreporter')
    if tr: tr.write_line(f"fault table written to {path} ({len(_FAULTS)} tests)")


# The tiny CO3D-format root every fault test starts from: 6 synthetic chairs x 4 frames at 64 px, processed
# (train 4 / val 1 / test 1), and a config small enough that an epoch takes about a second on one CPU core.
CLI_BIN = Path(sys.executable).parent
CLI_ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'PYTHONHASHSEED': '0'}
TINY_CONFIG = dict(image_size=64, batch_size=2, num_views=2, z_size=16, n_epochs=3, save_freq=1, vis_freq=100,
                   workers=0, device='cpu', seed=0)


def run_cli(*args, ok=True, timeout=600, env=None):
    """Run a command (a console script of this venv, or python; one BLAS thread, no display) and return the
    CompletedProcess; raise if `ok` and it failed. Shared by the CLI tests"""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env or CLI_ENV, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope='session')
def faults_data(tmp_path_factory):
    "`dict(co3d=, proc=, config=)`: the tiny synthetic root, its processed form and the tiny training config"
    import yaml
    d = tmp_path_factory.mktemp('faults_data')
    run_cli(CLI_BIN/'sparse3d_synth', '--out', d/'co3d', '--sequences', 6, '--frames', 4, '--image_size', 64,
               '--seed', 3, '--workers', 1, '--quiet')
    p = run_cli(CLI_BIN/'sparse3d_preprocess', '--input_dir', d/'co3d', '--output_dir', d/'proc',
                   '--image_size', 64, '--workers', 1)
    assert '6 sequences processed' in p.stdout and '0 failed' in p.stdout, p.stdout
    (d/'tiny.yaml').write_text(yaml.safe_dump(TINY_CONFIG))
    return dict(root=d, co3d=d/'co3d', proc=d/'proc', config=d/'tiny.yaml')


@pytest.fixture(scope='session')
def faults_reference_run(faults_data, tmp_path_factory):
    "The uninterrupted `sparse3d_train` run of the tiny config: what every interrupted run must end equal to"
    out = tmp_path_factory.mktemp('faults_ref')/'run'
    run_cli(CLI_BIN/'sparse3d_train', '--config', faults_data['config'], '--input_dir', faults_data['proc'],
               '--output_dir', out)
    return out


@pytest.fixture(scope='session')
def faults_cli():
    "Helpers for the fault tests: `.run(*args, ok=True)`, `.bin` (this venv's console scripts), `.env`, `.tiny` config"
    from types import SimpleNamespace
    return SimpleNamespace(run=run_cli, bin=CLI_BIN, env=CLI_ENV, tiny=dict(TINY_CONFIG))
