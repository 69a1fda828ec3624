"""Security: files from elsewhere must not make sparse3d run code, read outside the dataset root, write outside the
output folder, or reach the network.

- a checkpoint is only ever loaded with `torch.load(weights_only=True)`: a pickle that would run code is refused,
  and the code does not run (a marker file it would create stays absent);
- annotation paths that leave the dataset root (`../`, absolute, symlinks out), sequence and subset names that
  would become paths outside: refused during preprocessing, the sequence reported, nothing outside opened (a Python
  audit hook records every file opened);
- the config loader is safe YAML: a `!!python` tag is refused, alias bombs and deep nesting end in a clear error;
- synth -> preprocess -> train -> evaluate works with every non-loopback connection refused."""
import gzip, json, os, pickle, shutil, socket, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

from sparse3d.co3d import Co3dCategory
from sparse3d.config import CheckpointError, ConfigError, DataError, load_config
from sparse3d.train import load_checkpoint


# --- checkpoints: weights_only, always ------------------------------------------------------------------------------

class RunsCode:
    "Unpickling this calls `fn(*args)`: what a malicious checkpoint does"
    def __init__(self, fn, *args): self.fn, self.args = fn, args
    def __reduce__(self): return self.fn, self.args


def evil_checkpoints(d, marker):
    "Checkpoints that would create `marker` when unpickled without weights_only, in the formats torch.load reads"
    ok = dict(format=1, model={'w': torch.zeros(2)}, config={}, epoch=1, step=1, history=[], pose_dim=9)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    torch.save({**ok, 'history': [RunsCode(open, str(marker), 'w')]}, out.setdefault('zip_open', d/'zip_open.pt'))
    torch.save({**ok, 'model': RunsCode(os.system, f'touch {marker}')},
               out.setdefault('zip_os_system', d/'zip_os_system.pt'))
    torch.save({**ok, 'extra': RunsCode(subprocess.call, ['touch', str(marker)])},
               out.setdefault('zip_subprocess', d/'zip_subprocess.pt'))
    with open(out.setdefault('legacy_pickle', d/'legacy_pickle.pt'), 'wb') as f:
        pickle.dump({**ok, 'x': RunsCode(open, str(marker), 'w')}, f)
    (out.setdefault('renamed_zip', d/'renamed_zip.pt')).write_bytes(out['zip_os_system'].read_bytes())
    return out


def test_malicious_checkpoints_refused_and_code_not_run(tmp_path, fault):
    marker = tmp_path/'PWNED'
    evil = evil_checkpoints(tmp_path/'ck', marker)
    fault.describe('Security', f'checkpoints whose pickle runs code ({", ".join(evil)})',
                   'CheckpointError "refused" naming the file; the code never runs (no marker file)')
    for name, p in evil.items():
        fault.case()
        with pytest.raises(CheckpointError) as e: load_checkpoint(p)
        assert 'refused' in str(e.value) and str(p) in str(e.value), (name, str(e.value))
        assert not marker.exists(), f'{name}: the pickled code ran'


def test_every_checkpoint_load_is_weights_only(faults_data, faults_reference_run, tmp_path, monkeypatch, fault):
    fault.describe('Security', 'every torch.load of a resume (fit) and of a checkpoint read',
                   'called with weights_only=True')
    from sparse3d.train import fit
    calls, real = [], torch.load
    def spy(*a, **k):
        calls.append(k.get('weights_only'))
        return real(*a, **k)
    monkeypatch.setattr(torch, 'load', spy)
    out = tmp_path/'run'
    (out/'checkpoints').mkdir(parents=True)
    shutil.copy(faults_reference_run/'checkpoints'/'epoch_2.pt', out/'checkpoints'/'latest.pt')
    fit(load_config(faults_data['config']), faults_data['proc'], out, resume=True, progress=False)
    load_checkpoint(out/'checkpoints'/'latest.pt')
    fault.case(len(calls))
    assert calls and all(c is True for c in calls), calls


def has_test_cli():
    import sparse3d.evaluate as ev
    return hasattr(ev, 'test_cli') and (Path(sys.executable).parent/'sparse3d_test').exists()


def test_train_cli_refuses_malicious_checkpoint(faults_data, faults_cli, tmp_path, fault):
    fault.describe('Security', 'sparse3d_train --resume from a latest.pt whose pickle runs os.system',
                   'one-line "refused" error, no traceback, the command never runs')
    fault.case()
    marker = tmp_path/'PWNED'
    evil = evil_checkpoints(tmp_path/'ck', marker)
    out = tmp_path/'run'
    (out/'checkpoints').mkdir(parents=True)
    shutil.copy(evil['zip_os_system'], out/'checkpoints'/'latest.pt')
    p = faults_cli.run(faults_cli.bin/'sparse3d_train', '--config', faults_data['config'],
                       '--input_dir', faults_data['proc'],
                       '--output_dir', out, '--resume', ok=False)
    assert p.returncode != 0 and 'refused' in p.stderr and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.slow
def test_test_cli_refuses_malicious_checkpoint(faults_data, faults_cli, tmp_path, fault):
    fault.describe('Security', 'sparse3d_test --model_path on a checkpoint whose pickle runs subprocess.call',
                   'one-line "refused" error, no traceback, the command never runs')
    if not has_test_cli(): pytest.skip('sparse3d_test is not available in this version')
    fault.case()
    marker = tmp_path/'PWNED'
    evil = evil_checkpoints(tmp_path/'ck', marker)
    q = faults_cli.run(faults_cli.bin/'sparse3d_test', '--model_path', evil['zip_subprocess'],
                       '--test_dir', faults_data['proc'],
                       '--output_dir', tmp_path/'eval', '--device', 'cpu', ok=False)
    assert q.returncode != 0 and 'refused' in q.stderr and 'Traceback' not in q.stderr, q.stderr[-2000:]
    assert not marker.exists()


# --- YAML ------------------------------------------------------------------------------------------------------------

def yaml_payloads(marker):
    return {
        'python/object/apply': f'seed: !!python/object/apply:os.system ["touch {marker}"]\n',
        'python/object/new': f'seed: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
        'python/name': 'seed: !!python/name:os.system\n',
        'python/module': 'seed: !!python/module:os\n',
        'tag on a key': f'? !!python/object/apply:os.system ["touch {marker}"]\n: 1\n',
        'local tag': f'--- !<tag:yaml.org,2002:python/object/apply:os.system> ["touch {marker}"]\n',
    }


def test_yaml_python_tags_refused(tmp_path, fault):
    marker = tmp_path/'PWNED'
    payloads = yaml_payloads(marker)
    fault.describe('Security', f'YAML configs with !!python tags ({", ".join(payloads)})',
                   'ConfigError naming the file; nothing runs (safe_load)')
    for name, text in payloads.items():
        fault.case()
        p = tmp_path/f"{name.replace('/', '_').replace(' ', '_')}.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError) as e: load_config(p)
        assert str(p) in str(e.value), str(e.value)
    assert not marker.exists()


def test_cli_yaml_python_tag_refused(faults_data, faults_cli, tmp_path, fault):
    fault.describe('Security', 'sparse3d_train and sparse3d_preprocess given a --config with !!python/object/apply',
                   'one-line error, no traceback, nothing runs, nothing written')
    marker = tmp_path/'PWNED'
    cfg = tmp_path/'evil.yaml'
    cfg.write_text(yaml_payloads(marker)['python/object/apply'])
    for args in ([faults_cli.bin/'sparse3d_train', '--config', cfg, '--input_dir', faults_data['proc'],
                  '--output_dir', tmp_path/'run'],
                 [faults_cli.bin/'sparse3d_preprocess', '--config', cfg, '--input_dir', faults_data['co3d'],
                  '--output_dir', tmp_path/'proc']):
        fault.case()
        p = faults_cli.run(*args, ok=False)
        assert p.returncode != 0 and 'not valid YAML' in p.stderr and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert not marker.exists() and not (tmp_path/'run').exists() and not (tmp_path/'proc').exists()


@pytest.mark.timeout(60)
def test_yaml_bombs_and_nesting(tmp_path, fault):
    fault.describe('Security', 'YAML alias bomb (9^9 strings) in a known key, 20000-deep nesting, a date that does not '
                   'exist',
                   'ConfigError naming the file at once, with a short message')
    import time
    levels = ['n_epochs:', ' - &a0 [x, x, x, x, x, x, x, x, x]']
    levels += [f" - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    cases = {'alias bomb': '\n'.join(levels) + '\n', 'deep nesting': 'obj: ' + '[' * 20000 + ']' * 20000 + '\n',
             'bad date': 'seed: 2001-02-30\n'}
    for name, text in cases.items():
        fault.case()
        p = tmp_path/f"{name.replace(' ', '_')}.yaml"
        p.write_text(text)
        t0 = time.perf_counter()
        with pytest.raises(ConfigError) as e: load_config(p)
        msg = str(e.value)
        assert time.perf_counter() - t0 < 5 and len(msg) < 2000 and str(p) in msg, (name, msg[:300])


# --- the dataset root: nothing outside is read, nothing outside the output folder is written ----------------------

class OpenLog:
    "Every path opened while active (Python audit hook 'open'): PIL, numpy, json, gzip all open through it"
    hooked, active = False, None

    def __enter__(self):
        if not OpenLog.hooked:
            sys.addaudithook(lambda ev, args: OpenLog.active.append(args[0])
                             if ev == 'open' and OpenLog.active is not None
                             and isinstance(args[0], (str, bytes, os.PathLike)) else None)
            OpenLog.hooked = True
        OpenLog.active = self.paths = []
        return self

    def __exit__(self, *exc): OpenLog.active = None

    def under(self, folder):
        folder = Path(folder).resolve()
        return [p for p in self.paths if Path(os.fsdecode(p)).resolve().is_relative_to(folder)]


def rewrite_annotations(root, frame_edit=None, seq_edit=None):
    for name, edit in (('frame_annotations.jgz', frame_edit), ('sequence_annotations.jgz', seq_edit)):
        if edit is None: continue
        p = root/'chair'/name
        recs = json.loads(gzip.decompress(p.read_bytes()))
        p.write_bytes(gzip.compress(json.dumps([edit(r) for r in recs]).encode(), mtime=0))


@pytest.fixture
def hostile_root(faults_data, tmp_path):
    "A copy of the tiny root where 5 of 6 sequences point outside it, and an outside folder holding valid files"
    root, outside = tmp_path/'co3d', tmp_path/'outside'
    shutil.copytree(faults_data['co3d'], root)
    names = sorted(Co3dCategory(root, 'chair').sequences)
    s = dict(zip(['dotdot', 'absolute', 'ply_symlink', 'mask_dotdot', 'dir_symlink', 'clean'], names))
    src = root/'chair'/s['clean']
    outside.mkdir()
    shutil.copy(src/'images'/'frame000001.jpg', outside/'secret.jpg')
    shutil.copy(src/'masks'/'frame000001.png', outside/'secret.png')
    shutil.copy(src/'pointcloud.ply', outside/'secret.ply')
    shutil.copytree(root/'chair'/s['dir_symlink']/'images', outside/'images')
    shutil.rmtree(root/'chair'/s['dir_symlink']/'images')
    (root/'chair'/s['dir_symlink']/'images').symlink_to(outside/'images')            # a whole folder linked out
    (root/'chair'/s['ply_symlink']/'pointcloud.ply').unlink()
    (root/'chair'/s['ply_symlink']/'pointcloud.ply').symlink_to(outside/'secret.ply')  # the point cloud linked out
    def frames(r):
        n = r['sequence_name']
        if n == s['dotdot']: r['image']['path'] = '../outside/secret.jpg'
        if n == s['absolute']: r['image']['path'] = str(outside/'secret.jpg')
        if n == s['mask_dotdot']: r['mask']['path'] = f"chair/{n}/masks/../../../../outside/secret.png"
        return r
    rewrite_annotations(root, frames)
    return root, outside, s


def test_preprocess_refuses_paths_outside_root(hostile_root, tmp_path, fault):
    fault.describe('Security', "annotation paths that leave the dataset root: '../', absolute, a symlinked point "
                   "cloud, '..' inside a mask path, a symlinked image folder", 'each sequence reported with the path '
                   'named; no file outside the root is opened; the clean sequence is processed')
    from sparse3d.preprocess import PreprocessSettings, preprocess_category
    root, outside, s = hostile_root
    with OpenLog() as log:
        rep = preprocess_category(root, tmp_path/'proc', 'chair', PreprocessSettings(image_size=32), workers=1,
                                  progress=False)
    fault.case(5)
    assert log.paths and log.under(outside) == [], log.under(outside)
    assert list(rep['done']) == [s['clean']], rep
    for kind in ('dotdot', 'absolute', 'ply_symlink', 'mask_dotdot', 'dir_symlink'):
        err = rep['failed'][s[kind]]['error']
        assert 'leads outside the dataset root' in err or 'is absolute' in err, (kind, err)
        assert 'Refusing to follow it' in err, (kind, err)


def test_sequence_name_cannot_write_outside_output(faults_data, tmp_path, fault):
    fault.describe('Security', "a sequence_name of '../../escaped' (it becomes an output folder name)",
                   'that sequence is reported, nothing is written outside the output folder, the others are processed')
    from sparse3d.preprocess import PreprocessSettings, preprocess_category
    root = tmp_path/'co3d'
    shutil.copytree(faults_data['co3d'], root)
    victim = sorted(Co3dCategory(root, 'chair').sequences)[0]
    rename = lambda r: {**r, 'sequence_name': '../../escaped'} if r['sequence_name'] == victim else r
    rewrite_annotations(root, rename, rename)
    out = tmp_path/'work'/'proc'
    rep = preprocess_category(root, out, 'chair', PreprocessSettings(image_size=32), workers=1, progress=False)
    fault.case()
    assert 'not a plain name' in rep['failed']['../../escaped']['error'] and len(rep['done']) == 5
    assert [p for p in tmp_path.rglob('*escaped*')] == []


def test_subset_names_cannot_leave_root(faults_data, tmp_path, fault):
    fault.describe('Security', "subset names that are paths ('../../../outside/evil') in "
                   "category_to_subset_name_list.json",
                   'DataError naming the file; no file outside the root is opened')
    from sparse3d.preprocess import split_and_pack
    root, out = tmp_path/'co3d', tmp_path/'proc'
    shutil.copytree(faults_data['co3d'], root)
    shutil.copytree(faults_data['proc'], out)
    (tmp_path/'outside').mkdir()
    (tmp_path/'outside'/'evil.json').write_text('{"train": [], "val": [], "test": []}')
    (root/'category_to_subset_name_list.json').write_text(json.dumps({'chair': ['../../../outside/evil']}))
    with OpenLog() as log, pytest.raises(DataError) as e: split_and_pack(out, 'chair', root, progress=False)
    fault.case()
    assert 'category_to_subset_name_list.json' in str(e.value) and log.under(tmp_path/'outside') == []


# --- the network: nothing is fetched at run time ---------------------------------------------------------------------

LOOPBACK = ('127.0.0.1', '::1', 'localhost', '0.0.0.0', '')


def _host(addr): return addr[0] if isinstance(addr, tuple) else None


@pytest.fixture
def no_network(monkeypatch):
    "Refuse (and record) every connection and name lookup that is not loopback or a Unix socket, in this process"
    attempts = []
    def guard(fn, where):
        def wrapped(self_or_host, *args, **kwargs):
            sock = self_or_host if isinstance(self_or_host, socket.socket) else None
            addr = args[0] if sock is not None and args else self_or_host
            if sock is not None and sock.family == socket.AF_UNIX: return fn(self_or_host, *args, **kwargs)
            host = _host(addr) if sock is not None else (addr[0] if isinstance(addr, tuple) else addr)
            if host not in LOOPBACK and not str(host).startswith('127.'):
                attempts.append(f'{where} {addr!r}')
                raise OSError(f'network access blocked by the test: {where} {addr!r}')
            return fn(self_or_host, *args, **kwargs)
        return wrapped
    for name in ('connect', 'connect_ex', 'sendto'):
        monkeypatch.setattr(socket.socket, name, guard(getattr(socket.socket, name), name))
    monkeypatch.setattr(socket, 'create_connection', guard(socket.create_connection, 'create_connection'))
    real_gai = socket.getaddrinfo
    def gai(host, *a, **k):
        if host not in LOOPBACK and not str(host).startswith('127.') and host is not None:
            attempts.append(f'getaddrinfo {host!r}')
            raise socket.gaierror(f'name lookup blocked by the test: {host!r}')
        return real_gai(host, *a, **k)
    monkeypatch.setattr(socket, 'getaddrinfo', gai)
    with pytest.raises(OSError): socket.create_connection(('192.0.2.1', 80), timeout=1)   # the guard is live
    attempts.clear()
    return attempts


def evaluate_in_process(ckpt, proc, out):
    "Evaluate a checkpoint on the test split: the evaluation notebook's run if there is one, else predictions + metrics"
    import sparse3d.evaluate as ev
    if hasattr(ev, 'evaluate_run'):
        return ev.evaluate_run(ckpt, proc, out, device='cpu', progress=False)
    from sparse3d.data import MultiViewDataset
    from sparse3d.model import VAEGAN, model_inputs
    from sparse3d.train import checkpoint_config, load_model_weights
    from torch.utils.data import default_collate
    ck = load_checkpoint(ckpt)
    cfg = checkpoint_config(ck)
    model = VAEGAN(cfg).eval()
    load_model_weights(model, ck)
    ds = MultiViewDataset(proc, 'test', num_views=cfg.num_views, train=False, seed=cfg.seed)
    b = default_collate([ds[0]])
    with torch.inference_mode(): prob = torch.sigmoid(model(**model_inputs(b, cfg)).logits)
    from sparse3d.metrics import evaluate_batch
    return evaluate_batch(prob, b['voxels'], threshold=0.5)


def test_pipeline_in_process_without_network(faults_data, tmp_path, no_network, fault):
    fault.describe('Security', 'preprocess -> train -> evaluate in one process with every non-loopback connect and DNS '
                   'lookup refused',
                   'works; no connection was even attempted')
    from sparse3d.preprocess import PreprocessSettings, preprocess_category, split_and_pack
    from sparse3d.train import fit
    proc = tmp_path/'proc'
    rep = preprocess_category(faults_data['co3d'], proc, 'chair', PreprocessSettings(image_size=64), workers=1,
                              progress=False)
    assert len(rep['done']) == 6
    split_and_pack(proc, 'chair', faults_data['co3d'], progress=False)
    fit(load_config(faults_data['config'], n_epochs=1), proc, tmp_path/'run', progress=False)
    res = evaluate_in_process(tmp_path/'run'/'checkpoints'/'latest.pt', proc, tmp_path/'eval')
    fault.case()
    assert res and no_network == [], no_network


SITECUSTOMIZE = '''
# Installed by tests/test_faults_security.py: refuse and log every connection or name lookup that is not loopback.
import socket, os
_LOG = {log!r}
_OK = ('127.0.0.1', '::1', 'localhost', '0.0.0.0', '', None)
def _blocked(what):
    with open(_LOG, 'a') as f: f.write(f'{{os.getpid()}} {{what}}\\n')
    return OSError(f'network access blocked: {{what}}')
def _guard(name):
    real = getattr(socket.socket, name)
    def wrapped(self, addr, *a, **k):
        loopback = isinstance(addr, tuple) and (addr[0] in _OK or str(addr[0]).startswith('127.'))
        if self.family != socket.AF_UNIX and isinstance(addr, tuple) and not loopback:
            raise _blocked(f'{{name}} {{addr!r}}')
        return real(self, addr, *a, **k)
    setattr(socket.socket, name, wrapped)
for _n in ('connect', 'connect_ex', 'sendto'): _guard(_n)
_gai = socket.getaddrinfo
def _getaddrinfo(host, *a, **k):
    if host not in _OK and not str(host).startswith('127.'): raise _blocked(f'getaddrinfo {{host!r}}')
    return _gai(host, *a, **k)
socket.getaddrinfo = _getaddrinfo
'''


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_pipeline_without_network(faults_cli, tmp_path, fault):
    fault.describe('Security', 'sparse3d_synth -> sparse3d_preprocess -> sparse3d_train -> sparse3d_test, 2 worker '
                   'processes each, '
                   'every process under a sitecustomize that refuses non-loopback connections and DNS',
                   'the whole pipeline works; no process attempted a connection')
    site, log = tmp_path/'site', tmp_path/'network_attempts.log'
    site.mkdir()
    (site/'sitecustomize.py').write_text(SITECUSTOMIZE.format(log=str(log)))
    env = {**faults_cli.env,
           'PYTHONPATH': os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
    run = lambda *a: faults_cli.run(*a, env=env)
    probe = faults_cli.run(sys.executable, '-c',
                           'import socket; socket.create_connection(("192.0.2.1", 53), timeout=1)', ok=False, env=env)
    assert probe.returncode != 0 and 'network access blocked' in probe.stderr and log.exists()   # the block is live
    log.unlink()
    run(faults_cli.bin/'sparse3d_synth', '--out', tmp_path/'co3d', '--sequences', 6, '--frames', 4, '--image_size', 64,
        '--seed', 4, '--workers', 2, '--quiet')
    run(faults_cli.bin/'sparse3d_preprocess', '--input_dir', tmp_path/'co3d', '--output_dir', tmp_path/'proc',
        '--image_size', 64, '--workers', 2)
    cfg = tmp_path/'cfg.yaml'
    cfg.write_text('image_size: 64\nbatch_size: 2\nnum_views: 2\nz_size: 16\nn_epochs: 1\nworkers: 2\ndevice: cpu\n')
    run(faults_cli.bin/'sparse3d_train', '--config', cfg, '--input_dir', tmp_path/'proc',
        '--output_dir', tmp_path/'run')
    ckpt = tmp_path/'run'/'checkpoints'/'latest.pt'
    if has_test_cli():
        run(faults_cli.bin/'sparse3d_test', '--model_path', ckpt, '--test_dir', tmp_path/'proc',
            '--output_dir', tmp_path/'eval', '--device', 'cpu')
    else:
        run(sys.executable, '-c', textwrap.dedent(f'''
            import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_faults_security import evaluate_in_process
            print(evaluate_in_process({str(ckpt)!r}, {str(tmp_path/'proc')!r}, {str(tmp_path/'eval')!r}))'''))
    fault.case(4)
    assert not log.exists(), log.read_text()
