"""Every command ends the same way (the config chapter's exit codes): 0 done, 1 failed at run time, 2 bad usage or
input, and on failure one line on stderr, `<program>: error: ...`, without a traceback.

For each console script: a bad input (exit 2), and a failure at run time (exit 1). The run-time failure is a full
disk, injected at the operating system's edge (every `fsync` fails with ENOSPC, as on a full disk) in a script that
runs the real entry point with its real argument parsing; the benchmark, which runs for minutes before it writes,
fails in its first step instead."""
import configparser, sys
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import CLI_BIN as BIN, run_cli

ini = configparser.ConfigParser()
ini.read(Path(__file__).parents[1]/'settings.ini')
ENTRY = dict(line.strip().split('=') for line in ini['DEFAULT']['console_scripts'].strip().splitlines())

DISK_FULL = '''import errno, os
def _full_disk(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = _full_disk
'''
BENCH_STEP_FAILS = '''import sparse3d.bench as b
from sparse3d.config import Sparse3DError
def _fails(*a, **k): raise Sparse3DError("benchmark step train failed (exit status 1): killed")
b.run_benchmarks = _fails
'''


def ends_with_error(p, prog, code, *words):
    "`p` exited with `code` after one `prog: error: ...` line (the last on stderr) that says `words`, with no traceback"
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert 'Traceback' not in p.stderr, p.stderr[-3000:]
    assert lines and lines[-1].startswith(f'{prog}: error: '), p.stderr[-2000:]
    assert sum(line.startswith(f'{prog}: error') for line in lines) == 1, p.stderr[-2000:]
    for w in words: assert w in lines[-1], (w, lines[-1])
    return lines[-1]


def run_with_fault(tmp_path, prog, prelude, *args):
    "Run console script `prog` (its real entry point and argument parsing) in a script that first runs `prelude`"
    module, func = ENTRY[prog].split(':')
    script = tmp_path/f'{prog}_with_fault.py'
    script.write_text(f"{prelude}\nimport sys\nfrom {module} import {func}\n"
                      f"if __name__ == '__main__': sys.exit({func}())\n")
    return run_cli(sys.executable, script, *args, ok=False)


def test_every_console_script_is_covered():
    assert sorted(ENTRY) == sorted(BAD_INPUTS) == sorted(RUN_TIME), sorted(ENTRY)


# --- bad usage or input: exit 2 -----------------------------------------------------------------------------------

def ply(path, n=200):
    "An ASCII point cloud of `n` points on a sphere"
    import numpy as np
    xyz = np.random.default_rng(0).normal(size=(n, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    path.write_text(f"ply\nformat ascii 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
                    "end_header\n" + ''.join(f"{a:.5f} {b:.5f} {c:.5f}\n" for a, b, c in xyz))
    return path


BAD_INPUTS = {   # program: (arguments given a tmp folder and the tiny dataset, words of the message)
    'sparse3d_synth': (lambda t, d: ['--out', t/'s', '--sequences', 0], '--sequences must be an integer'),
    'sparse3d_ply2voxel': (lambda t, d: ['--input', t/'missing.ply', '--output', t/'v.binvox'], 'missing.ply'),
    'sparse3d_extract_poses': (lambda t, d: ['--input_dir', d['co3d'], '--output_dir', t/'p', '--sequence', 'no\nsuch'],
                               "no sequence 'no\\nsuch'"),
    'sparse3d_preprocess_sequence': (lambda t, d: ['--input_dir', t/'missing', '--output_dir', t/'p',
                                                   '--sequence', 'x'], 'dataset root not found'),
    'sparse3d_preprocess': (lambda t, d: ['--input_dir', d['co3d'], '--output_dir', t/'p', '--cube_len', 48],
                            "'cube_len' = 48 is out of range"),
    'sparse3d_split': (lambda t, d: ['--output_dir', t/'empty'], 'no processed sequences'),
    'sparse3d_train': (lambda t, d: ['--config', d['config'], '--input_dir', d['proc'], '--output_dir', t/'r',
                                     '--batch_size', 0], "'batch_size' = 0 is out of range"),
    'sparse3d_test': (lambda t, d: ['--model_path', t/'missing.pt', '--test_dir', d['proc'], '--output_dir', t/'e'],
                      'checkpoint not found'),
    'sparse3d_bench': (lambda t, d: ['--output', t/'B.md', '--runs', 'pose'], "'pose' is not label=checkpoint"),
    'sparse3d_results': (lambda t, d: ['--check', '--root', t/'empty'], 'has no nbs/ folder'),
}


@pytest.mark.parametrize('prog', list(BAD_INPUTS))
def test_bad_input_exits_2(prog, faults_data, tmp_path):
    (tmp_path/'empty').mkdir()
    args, words = BAD_INPUTS[prog]
    ends_with_error(run_cli(BIN/prog, *args(tmp_path, faults_data), ok=False), prog, 2, words)


def test_bad_flag_exits_2_like_argparse():
    p = run_cli(BIN/'sparse3d_train', '--no_such_flag', ok=False)
    assert p.returncode == 2 and 'unrecognized arguments: --no_such_flag' in p.stderr, p.stderr


# --- failed at run time: exit 1 -----------------------------------------------------------------------------------

def fake_checkpoint(path, d):
    "An untrained model saved as sparse3d_train would, for the tiny dataset"
    from sparse3d.config import load_config
    from sparse3d.data import POSE_DIM
    from sparse3d.model import VAEGAN
    from sparse3d.train import CHECKPOINT_FORMAT, save_checkpoint
    cfg = load_config(d['config'])
    save_checkpoint(path, dict(format=CHECKPOINT_FORMAT, model=VAEGAN(cfg, POSE_DIM).state_dict(), config=asdict(cfg),
                               epoch=1, step=2, history=[], pose_dim=POSE_DIM, threshold=0.5, best_iou=0.1))
    return path


def first_sequence(d):
    "The first sequence of the tiny dataset"
    return sorted(p.name for p in (d['co3d']/'chair').iterdir() if p.is_dir() and p.name != 'set_lists')[0]


RUN_TIME = {     # program: (fault, arguments given a tmp folder and the tiny dataset)
    'sparse3d_synth': (DISK_FULL, lambda t, d: ['--out', t/'s', '--sequences', 1, '--frames', 2, '--image_size', 32,
                                                '--workers', 0, '--quiet']),
    'sparse3d_ply2voxel': (DISK_FULL, lambda t, d: ['--input', ply(t/'in.ply'), '--output', t/'v.binvox']),
    'sparse3d_extract_poses': (DISK_FULL, lambda t, d: ['--input_dir', d['co3d'], '--output_dir', t/'p',
                                                        '--sequence', first_sequence(d)]),
    'sparse3d_preprocess_sequence': (DISK_FULL, lambda t, d: ['--input_dir', d['co3d'], '--output_dir', t/'p',
                                                              '--sequence', first_sequence(d), '--image_size', 64]),
    'sparse3d_preprocess': (DISK_FULL, lambda t, d: ['--input_dir', d['co3d'], '--output_dir', t/'p',
                                                     '--image_size', 64, '--workers', 1]),
    'sparse3d_split': (DISK_FULL, lambda t, d: ['--output_dir', copy(d['proc'], t/'proc')]),
    'sparse3d_train': (DISK_FULL, lambda t, d: ['--config', d['config'], '--input_dir', d['proc'],
                                                '--output_dir', t/'r']),
    'sparse3d_test': (DISK_FULL, lambda t, d: ['--model_path', fake_checkpoint(t/'m.pt', d), '--test_dir', d['proc'],
                                               '--output_dir', t/'e', '--device', 'cpu']),
    'sparse3d_bench': (BENCH_STEP_FAILS, lambda t, d: ['--output', t/'B.md']),
    'sparse3d_results': (DISK_FULL, lambda t, d: ['--write', '--root', results_project(t/'r'), '--output', '']),
}


def results_project(root):
    "A project folder whose notebook has a result marker to fill from its BENCHMARKS.json"
    import json
    (root/'nbs').mkdir(parents=True)
    cell = dict(cell_type='markdown', id='0a1b2c3d', metadata={}, source=['<!-- result: n -->?<!-- /result -->'])
    (root/'nbs'/'index.ipynb').write_text(json.dumps(dict(cells=[cell], metadata={}, nbformat=4, nbformat_minor=5)))
    (root/'BENCHMARKS.json').write_text('{"n": 1}')
    return root


def copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize('prog', list(RUN_TIME))
def test_failure_at_run_time_exits_1(prog, faults_data, tmp_path):
    fault, args = RUN_TIME[prog]
    p = run_with_fault(tmp_path, prog, fault, *args(tmp_path, faults_data))
    ends_with_error(p, prog, 1, 'benchmark step train failed' if prog == 'sparse3d_bench' else 'the disk is full')
