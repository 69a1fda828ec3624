"""Fault injection: `kill -9` of `sparse3d_train` (and `sparse3d_preprocess`) at random points and in the middle of
a checkpoint write, then `--resume`. What must survive: every checkpoint that exists loads (none is ever
half-written), the run continues from the last complete epoch, and its final weights equal those of an
uninterrupted run (CPU runs are reproducible, as the design chapter says)."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from sparse3d.train import load_checkpoint

# The training CLI with torch.save slowed down from the inside: the checkpoint bytes are made in memory, half of
# them written, a line announcing the stall appended to MARK, a sleep, then the rest. No environment variable:
# the patch lives in this wrapper, which then runs the real `sparse3d_train` entry point.
WRAPPER = '''
import io, os, sys, time, torch
STALL, EPOCH, MARK, SLEEP = {stall!r}, {epoch!r}, {mark!r}, {sleep!r}
_save = torch.save
def save(obj, f, *args, **kwargs):
    target = os.path.basename(str(sys._getframe(1).f_locals.get('path', '')))   # save_checkpoint(path, ck)
    buf = io.BytesIO(); _save(obj, buf, *args, **kwargs); data = buf.getvalue()
    if STALL is not None and (target != STALL or obj.get('epoch') != EPOCH): f.write(data); return
    f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno())
    with open(MARK, 'a') as m: m.write(f"{{target}} {{obj.get('epoch')}}\\n")
    time.sleep(SLEEP)
    f.write(data[len(data) // 2:])
torch.save = save
from sparse3d.train import train_cli
train_cli()
'''

TIMING_KEYS = ('seconds', 'samples_per_s')


def wrapper(tmp, stall=None, epoch=None, sleep=60.0):
    """A script running sparse3d_train whose checkpoint write of `stall` (e.g. 'latest.pt') at `epoch` stalls
    half-written; every write when `stall` is None"""
    mark = tmp/'stalls.txt'
    p = tmp/'train_slow_save.py'
    p.write_text(WRAPPER.format(stall=stall, epoch=epoch, mark=str(mark), sleep=sleep))
    return p, mark


def train_args(cli, data, out, resume):
    a = ['--input_dir', data['proc'], '--output_dir', out, '--device', 'cpu']
    return a + (['--resume'] if resume else ['--config', data['config']])


def popen(args, cli, log):
    return subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT, env=cli.env)


def kill9(p):
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)


def wait_for(path, p, timeout=120):
    "Wait until `path` exists (True) or process `p` ends (False); bounded"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_text().strip(): return True
        if p.poll() is not None: return False
        time.sleep(0.02)
    raise AssertionError(f"neither {path} nor the end of the process within {timeout} s")


def check_run_dir(out):
    "What must hold in a run folder at any moment, even right after a kill -9: returns the epochs of the checkpoints"
    ck = out/'checkpoints'
    # loads or raises
    epochs = {p.name: load_checkpoint(p)['epoch'] for p in sorted(ck.glob('*.pt'))} if ck.exists() else {}
    for name, e in epochs.items():
        if name.startswith('epoch_'): assert e == int(name[6:-3]), (name, e)
    if (out/'metrics.jsonl').exists():
        got = [json.loads(line)['epoch'] for line in (out/'metrics.jsonl').read_text().splitlines() if line.strip()]
        last = epochs.get('latest.pt', 0)            # the metrics line of an epoch is appended just after its latest.pt
        assert got == list(range(1, len(got) + 1)) and max(last - 1, 0) <= len(got) <= last, (got, epochs)
    return epochs


def same_tensors(a, b):
    if isinstance(a, dict): return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a): return torch.equal(a, b)
    return a == b


def strip_timing(history): return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def assert_same_as_reference(out, ref, name='latest.pt'):
    a, b = load_checkpoint(out/'checkpoints'/name), load_checkpoint(ref/'checkpoints'/name)
    assert a['epoch'] == b['epoch'] and a['step'] == b['step'], (a['epoch'], b['epoch'], a['step'], b['step'])
    bad = [k for k in b['model'] if not torch.equal(a['model'][k], b['model'][k])]
    assert not bad, f"{name}: {len(bad)} tensors differ from the uninterrupted run, e.g. {bad[:3]}"
    assert same_tensors(a['opt_eg'], b['opt_eg']) and same_tensors(a['opt_d'], b['opt_d']), 'optimiser state differs'
    assert strip_timing(a['history']) == strip_timing(b['history'])


def temp_files(out): return sorted(p.name for p in (out/'checkpoints').glob('.*.tmp'))


# --- one kill, exactly in the middle of writing latest.pt of epoch 2 (fast) -------------------------------------------

@pytest.fixture(scope='module')
def killed_mid_checkpoint(faults_data, faults_cli, tmp_path_factory):
    "A run killed while latest.pt of epoch 2 is half-written: the folder right after the kill, then after --resume"
    tmp = tmp_path_factory.mktemp('kill_mid_write')
    out = tmp/'run'
    script, mark = wrapper(tmp, 'latest.pt', 2)
    with open(tmp/'log1.txt', 'w') as log:
        p = popen([sys.executable, script, *train_args(faults_cli, faults_data, out, False)], faults_cli, log)
        stalled = wait_for(mark, p)
        kill9(p)
    assert stalled, (tmp/'log1.txt').read_text()[-2000:]
    after_kill = dict(epochs=check_run_dir(out), temps=temp_files(out), stalls=mark.read_text().split())
    r = faults_cli.run(faults_cli.bin/'sparse3d_train', *train_args(faults_cli, faults_data, out, True))
    return dict(out=out, after_kill=after_kill, resume=r)


def test_kill_mid_checkpoint_write_every_checkpoint_loads(killed_mid_checkpoint, fault):
    fault.describe('Interruption',
                   'kill -9 of sparse3d_train while latest.pt is half-written (torch.save stalled mid-write)',
                   'every .pt that exists loads; latest.pt is the previous complete epoch')
    fault.case()
    k = killed_mid_checkpoint['after_kill']
    assert k['stalls'] == ['latest.pt', '2']
    # latest.pt is written last, so epoch_2.pt may already be complete when latest.pt stalls; every file present loads
    assert k['epochs']['latest.pt'] == 1 and k['epochs']['epoch_1.pt'] == 1 and k['epochs'].get('epoch_2.pt', 2) == 2
    assert k['temps'], 'the half-written temporary file should be beside latest.pt, not in its place'


def test_kill_mid_checkpoint_resume_equals_uninterrupted(killed_mid_checkpoint, faults_reference_run, fault):
    fault.describe('Interruption', 'kill -9 mid-checkpoint, then --resume',
                   'resumes at epoch 2; final weights, optimiser '
                   'state and metrics equal an uninterrupted run')
    fault.case()
    out = killed_mid_checkpoint['out']
    assert 'done: 3 epochs' in killed_mid_checkpoint['resume'].stdout
    check_run_dir(out)
    assert [json.loads(line)['epoch'] for line in (out/'metrics.jsonl').read_text().splitlines()] == [1, 2, 3]
    for name in ('latest.pt', 'epoch_2.pt', 'epoch_3.pt'): assert_same_as_reference(out, faults_reference_run, name)


def test_kill_mid_checkpoint_no_temp_files_left_after_resume(killed_mid_checkpoint, fault):
    fault.describe('Interruption', 'half-written temporary checkpoint left by a kill -9', 'removed on --resume')
    fault.case()
    assert temp_files(killed_mid_checkpoint['out']) == []


# --- a kill after epoch_N.pt, while best.pt is written, before latest.pt (slow) ------------------------------------

@pytest.mark.slow
def test_kill_between_epoch_checkpoint_and_latest(faults_data, faults_cli, faults_reference_run, tmp_path, fault):
    fault.describe('Interruption',
                   'kill -9 after epoch_1.pt is written, while best.pt is half-written, before latest.pt',
                   'the re-run redoes epoch 1; in the end it has every checkpoint an uninterrupted run has '
                   '(epoch_N.pt, best.pt), all equal to it, and no temporary file')
    fault.case()
    out = tmp_path/'run'
    script, mark = wrapper(tmp_path, 'best.pt', 1)
    with open(tmp_path/'log.txt', 'w') as log:
        p = popen([sys.executable, script, *train_args(faults_cli, faults_data, out, False)], faults_cli, log)
        assert wait_for(mark, p)
        kill9(p)
    assert check_run_dir(out) == {'epoch_1.pt': 1}           # latest.pt, the resume marker, is written last
    faults_cli.run(faults_cli.bin/'sparse3d_train', *train_args(faults_cli, faults_data, out, False))
    want = sorted(p.name for p in (faults_reference_run/'checkpoints').glob('*.pt'))
    assert sorted(p.name for p in (out/'checkpoints').glob('*.pt')) == want
    for name in want: assert_same_as_reference(out, faults_reference_run, name)
    assert temp_files(out) == []


# --- kill -9 at random moments, again and again (slow) ----------------------------------------------------------------

EPOCHS = 6


@pytest.fixture(scope='module')
def reference6(faults_data, faults_cli, tmp_path_factory):
    "An uninterrupted run of the tiny config for 6 epochs"
    out = tmp_path_factory.mktemp('ref6')/'run'
    faults_cli.run(faults_cli.bin/'sparse3d_train', *train_args(faults_cli, faults_data, out, False),
                   '--n_epochs', EPOCHS)
    return out


def kill_until_done(faults_data, faults_cli, out, tmp, fault, next_kill, script=None, max_kills=8):
    "Start (or resume) the run; kill -9 it when `next_kill(process, attempt)` says so, until it finishes (bounded)"
    kills, log_path = [], tmp/'log.txt'
    for attempt in range(max_kills + 1):
        resume = (out/'checkpoints'/'latest.pt').exists()
        cmd = [sys.executable, script] if script else [faults_cli.bin/'sparse3d_train']
        extra = [] if resume else ['--n_epochs', EPOCHS]
        with open(log_path, 'a') as log:
            p = popen([*cmd, *train_args(faults_cli, faults_data, out, resume), *extra], faults_cli, log)
            killed = attempt < max_kills and next_kill(p, attempt)
            if killed:
                kill9(p)
                epochs = check_run_dir(out)                  # after every kill: every checkpoint loads
                kills.append(dict(attempt=attempt, resume=resume, latest=epochs.get('latest.pt')))
                fault.case()
                continue
            p.wait(600)
        assert p.returncode == 0, log_path.read_text()[-3000:]
        break
    return kills


def assert_complete_and_equal(out, ref):
    check_run_dir(out)
    assert_same_as_reference(out, ref)
    epochs = [json.loads(line)['epoch'] for line in (out/'metrics.jsonl').read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    for p in (out/'checkpoints').glob('epoch_*.pt'): assert_same_as_reference(out, ref, p.name)


def marks(mark): return len(mark.read_text().splitlines()) if mark.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize('seed', [0, 1])
def test_kill_at_random_points_then_resume(faults_data, faults_cli, reference6, tmp_path, fault, seed):
    fault.describe('Interruption',
                   f'kill -9 of sparse3d_train ({EPOCHS} epochs) at random points (seed {seed}: after 0-3 '
                   'checkpoint writes, then a random delay), resumed each time',
                   'every checkpoint loads after every kill; the run resumes from the last complete epoch; the final '
                   'weights equal an uninterrupted run')
    script, mark = wrapper(tmp_path, None, None, sleep=0.0)     # no stall: it only notes each checkpoint write
    rng = random.Random(seed)
    def at_random_point(p, attempt):
        k, t0 = rng.randint(0, 3), time.monotonic()
        target = marks(mark) + k                                  # progress: let k checkpoint writes happen first
        while marks(mark) < target:
            if p.poll() is not None: return False
            assert time.monotonic() - t0 < 300, 'no progress in 300 s'
            time.sleep(0.01)
        try: p.wait(rng.uniform(0.0, 1.5 if k else 4.0)); return False   # then somewhere in the next second or so
        except subprocess.TimeoutExpired: return True
    kills = kill_until_done(faults_data, faults_cli, tmp_path/'run', tmp_path, fault, at_random_point, script=script)
    assert len(kills) >= 3, kills
    assert_complete_and_equal(tmp_path/'run', reference6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_at_random_points_during_slow_checkpoint_writes(faults_data, faults_cli, reference6, tmp_path, fault):
    fault.describe('Interruption', 'kill -9 inside a randomly chosen checkpoint write (every torch.save stalls 0.4 s '
                   'half-written), resumed each time',
                   'no half-written .pt is ever seen; the final weights equal an uninterrupted run')
    script, mark = wrapper(tmp_path, None, None, sleep=0.4)
    rng = random.Random(7)
    def inside_a_write(p, attempt):
        target, t0 = marks(mark) + rng.randint(1, 4), time.monotonic()
        while time.monotonic() - t0 < 300:                   # wait for the chosen write to start, or the end
            if marks(mark) >= target:
                time.sleep(rng.uniform(0.0, 0.35)); return True
            if p.poll() is not None: return False
            time.sleep(0.01)
        raise AssertionError('no checkpoint write within 300 s')
    kills = kill_until_done(faults_data, faults_cli, tmp_path/'run', tmp_path, fault, inside_a_write, script=script)
    assert len(kills) >= 4, kills
    assert_complete_and_equal(tmp_path/'run', reference6)


# --- kill -9 of sparse3d_preprocess at random moments (slow) ----------------------------------------------------------

def tree_bytes(root, skip=('preprocess_report.json',)):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob('*'))
            if p.is_file() and p.name not in skip}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_preprocess_at_random_points_then_rerun(faults_cli, tmp_path, fault):
    fault.describe('Interruption', 'kill -9 of sparse3d_preprocess and its 2 workers at random points (in start-up, '
                   'after 1-5 more sequences, or in packing; then a random delay), re-run each time',
                   'the re-run finishes the job; the processed root is byte-identical to an uninterrupted run')
    co3d = tmp_path/'co3d'
    faults_cli.run(faults_cli.bin/'sparse3d_synth', '--out', co3d, '--sequences', 24, '--frames', 6, '--image_size', 64,
                   '--seed', 5, '--workers', 2, '--quiet')
    args = lambda out: [faults_cli.bin/'sparse3d_preprocess', '--input_dir', co3d, '--output_dir', out,
                        '--image_size', 64, '--workers', 2]
    faults_cli.run(*args(tmp_path/'ref'))
    rng, out, kills = random.Random(11), tmp_path/'out', 0
    done = lambda: len(list((out/'chair').glob('*_processed/sequence_meta.json')))
    for attempt in range(9):
        p = subprocess.Popen([str(a) for a in args(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=faults_cli.env, start_new_session=True)
        if attempt < 8:                                       # a random point in start-up, processing or packing
            n, k, t0 = done(), rng.randint(0, 5), time.monotonic()
            if n >= 24: phase, ready = 'packing', lambda: bool(list(out.glob('chair/packed/.*.tmp-*')))
            elif k: phase, ready = 'processing', lambda n=n, k=k: done() >= n + k
            else: phase, ready = 'start-up', lambda: True
            while not ready() and p.poll() is None and time.monotonic() - t0 < 300: time.sleep(0.005)
            try: p.wait(rng.uniform(0.5, 3.0) if phase == 'start-up' else rng.uniform(0.0, 0.4))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)             # the CLI and its worker processes, all at once
                p.wait(30)
                kills += 1; fault.case()
                continue
        p.wait(600)
        assert p.returncode == 0
        break
    assert kills >= 2                                     # how many land depends on the machine's speed (3-8 seen)
    assert tree_bytes(out) == tree_bytes(tmp_path/'ref')
    assert not list((out/'chair').glob('*.tmp-*')) and not list((out/'chair'/'packed').glob('.*.tmp-*'))
