"""Fault injection: the disk fills up, or the output folder is read-only, while a checkpoint, a processed sequence or a
packed split is being written. What must survive: a clear one-line error that names the file (an `OutputError`, a
`Sparse3DError`), never a library's traceback or a crash; the previous checkpoint and the previous outputs intact
and loadable; no temporary file left behind; and, once there is room again, `--resume` / a re-run that ends exactly
where an undisturbed run ends.

Disk-full is simulated twice: in-process by patching the writer (works everywhere), and for real on a small tmpfs
(`mount -t tmpfs`; those tests are skipped where mounting is not allowed)."""
import contextlib, errno, hashlib, json, os, shutil, subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import sparse3d.config as config_mod
from sparse3d.config import Sparse3DError, atomic_write, load_config
from sparse3d.train import fit, load_checkpoint

OutputError = getattr(config_mod, 'OutputError', Sparse3DError)
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def digest(path): return hashlib.sha1(Path(path).read_bytes()).hexdigest()
def tree_digest(root):
    return {str(p.relative_to(root)): digest(p) for p in sorted(Path(root).rglob('*')) if p.is_file()}
def leftovers(root): return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*') if '.tmp' in p.name)


# --- atomic_write, the one writer every output goes through ------------------------------------------------------

STAGES = ['mkstemp', 'write', 'fsync', 'replace']
ERRNOS = {errno.ENOSPC: 'disk is full', errno.EDQUOT: 'quota', errno.EROFS: 'read-only', errno.EACCES: 'permission'}


@pytest.mark.parametrize('stage', STAGES)
@pytest.mark.parametrize('code', list(ERRNOS))
def test_atomic_write_refused_keeps_previous_file(tmp_path, monkeypatch, fault, stage, code):
    fault.describe('Disk', 'ENOSPC, EDQUOT, EROFS or EACCES raised by mkstemp, write, fsync or replace inside '
                   'atomic_write',
                   'OutputError naming the file and the cause; previous content intact; no temporary file')
    fault.case()
    target = tmp_path/'out'/'latest.pt'
    target.parent.mkdir(); target.write_bytes(b'previous')
    err = OSError(code, os.strerror(code))
    def boom(*a, **k): raise err
    if stage == 'mkstemp': monkeypatch.setattr(config_mod.tempfile, 'mkstemp', boom)
    if stage == 'fsync': monkeypatch.setattr(config_mod.os, 'fsync', boom)
    if stage == 'replace': monkeypatch.setattr(config_mod.os, 'replace', boom)
    def write_new():
        with atomic_write(target) as f:
            f.write(b'new content ' * 1000)
            if stage == 'write': raise err                       # what f.write raises on a full disk
    with pytest.raises(OutputError) as e: write_new()
    msg = str(e.value)
    assert str(target) in msg and ERRNOS[code] in msg.lower(), msg
    assert isinstance(e.value, Sparse3DError) and isinstance(e.value, OSError) and e.value.errno == code
    assert target.read_bytes() == b'previous' and leftovers(tmp_path) == []


def test_atomic_write_other_errors_pass_through(tmp_path, fault):
    fault.describe('Disk', 'a non-disk error inside atomic_write (a bug in the caller)',
                   'raised unchanged, not disguised as a disk error')
    fault.case()
    target = tmp_path/'x.json'; target.write_text('old')
    def write_then_fail():
        with atomic_write(target, 'w') as f: f.write('half'); raise ZeroDivisionError('a bug in the caller')
    with pytest.raises(ZeroDivisionError): write_then_fail()
    with pytest.raises(FileNotFoundError):                       # an input that is missing is not an output problem
        with atomic_write(target, 'w') as f: f.write(open(tmp_path/'missing.txt').read())
    assert target.read_text() == 'old' and leftovers(tmp_path) == []


def test_atomic_write_respects_umask(tmp_path, fault):
    fault.describe('Disk', 'file mode of atomically written outputs',
                   'same mode as an ordinary write (umask), not 0600')
    fault.case()
    with atomic_write(tmp_path/'a.bin') as f: f.write(b'x')
    (tmp_path/'b.bin').write_bytes(b'x')
    assert (tmp_path/'a.bin').stat().st_mode & 0o777 == (tmp_path/'b.bin').stat().st_mode & 0o777


# --- a checkpoint write fails in fit(), in-process ----------------------------------------------------------------

def failing_save(monkeypatch, at_epoch, hidden):
    "torch.save that writes half of the checkpoint of `at_epoch` and fails as a full disk makes it fail"
    real, full = torch.save, []
    def save(obj, f, *a, **k):
        if obj.get('epoch') != at_epoch and not full: return real(obj, f, *a, **k)
        full.append(True)
        f.write(b'\0' * 4096)
        if hidden:       # what torch really raises on ENOSPC: the OSError is lost inside its C++ zip writer
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')
        raise ENOSPC
    def fsync(fd):
        if full: raise ENOSPC
        return os_fsync(fd)
    os_fsync = os.fsync
    monkeypatch.setattr(torch, 'save', save)
    monkeypatch.setattr(config_mod.os, 'fsync', fsync)


@pytest.mark.parametrize('hidden', [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=['oserror', 'torch-runtimeerror'])
def test_fit_checkpoint_disk_full_keeps_last_checkpoint(faults_data, tmp_path, monkeypatch, fault, hidden):
    hides = ' (torch.save hides the OSError in a RuntimeError)' if hidden else ''
    fault.describe('Disk', 'disk full while fit() writes the checkpoints of epoch 2' + hides,
                   'OutputError naming the checkpoint; latest.pt still epoch 1 and loads; metrics.jsonl says epoch 1; '
                   'no temp files')
    fault.case()
    cfg = load_config(faults_data['config'], n_epochs=2)
    failing_save(monkeypatch, 2, hidden)
    with pytest.raises(Sparse3DError) as e: fit(cfg, faults_data['proc'], tmp_path, progress=False)
    monkeypatch.undo()
    msg = str(e.value)
    # epoch_N.pt and best.pt are written before latest.pt (the resume marker), so the first write to fail may be any
    assert 'disk is full' in msg and str(tmp_path/'checkpoints') in msg and '.pt: cannot write it' in msg, msg
    ck = load_checkpoint(tmp_path/'checkpoints'/'latest.pt')
    assert ck['epoch'] == 1 and all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    assert [json.loads(line)['epoch'] for line in (tmp_path/'metrics.jsonl').read_text().splitlines()] == [1]
    assert leftovers(tmp_path) == []


# --- preprocessing: the disk fills up in the middle of a re-run ----------------------------------------------------

def test_preprocess_disk_full_keeps_previous_outputs(faults_data, tmp_path, monkeypatch, fault):
    fault.describe('Disk', 'disk full in the middle of re-processing a category with new settings (writes fail '
                   'from the 25th on)', 'OutputError naming the file; every sequence is either its old complete self '
                   'or its new one; packed splits untouched; a re-run finishes')
    from sparse3d.preprocess import PreprocessSettings, preprocess_category, load_sequence_meta, split_and_pack
    from sparse3d.co3d import load_image
    out = tmp_path/'proc'
    shutil.copytree(faults_data['proc'], out)
    packed_before = tree_digest(out/'chair'/'packed')
    names = json.loads((out/'chair'/'splits.json').read_text())
    names = sorted(names['train'] + names['val'] + names['test'])
    calls, real, real_write = [0], os.fsync, Path.write_bytes
    def fsync(fd):                                              # atomic_write's files (poses, meta, voxels)
        calls[0] += 1
        if calls[0] >= 25: raise ENOSPC
        return real(fd)
    def write_bytes(path, data):                                # the crops, written plainly into a temporary folder
        calls[0] += 1
        if calls[0] >= 25: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)
    monkeypatch.setattr(config_mod.os, 'fsync', fsync)
    monkeypatch.setattr(Path, 'write_bytes', write_bytes)
    st = PreprocessSettings(image_size=32)
    with pytest.raises(Sparse3DError) as e: preprocess_category(faults_data['co3d'], out, 'chair', st, workers=1,
                                                                progress=False)
    monkeypatch.undo()
    fault.case()
    assert 'disk is full' in str(e.value) and str(out) in str(e.value), str(e.value)
    sizes = []
    for n in names:                                             # old (64 px) or new (32 px), complete either way
        meta = load_sequence_meta(out, 'chair', n)
        assert meta is not None, f"{n}: its previous outputs were lost"
        inst = out/'chair'/f'{n}_dataset_instance'
        for fr in meta['frames']: assert load_image(inst/fr['image']).shape[0] == meta['settings']['image_size']
        sizes.append(meta['settings']['image_size'])
    assert 64 in sizes, 'the failure should have struck before every sequence was redone'
    assert leftovers(out) == [] and tree_digest(out/'chair'/'packed') == packed_before
    rep = preprocess_category(faults_data['co3d'], out, 'chair', st, workers=1, progress=False)
    assert not rep['failed'] and len(rep['done']) + len(rep['skipped_done']) == len(names)
    split_and_pack(out, 'chair', faults_data['co3d'], progress=False)
    assert np.load(out/'chair'/'packed'/'train'/'images.npy').shape[1] == 32


def test_preprocess_read_only_output_stops_run(faults_data, tmp_path, monkeypatch, fault):
    fault.describe('Disk', 'output folder refuses writes (EROFS from every new file) while preprocessing',
                   'the run stops at once with one OutputError naming the folder, instead of failing every sequence')
    fault.case()
    from sparse3d.preprocess import PreprocessSettings, preprocess_category
    def refuse(*a, **k): raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(config_mod.tempfile, 'mkstemp', refuse)
    with pytest.raises(Sparse3DError) as e:
        preprocess_category(faults_data['co3d'], tmp_path/'proc', 'chair', PreprocessSettings(image_size=32), workers=1,
                            progress=False)
    assert 'read-only' in str(e.value) and str(tmp_path/'proc') in str(e.value)


# --- for real: a small tmpfs that fills up, then is remounted read-only -----------------------------------------------

class Tmpfs:
    def __init__(self, path): self.path = Path(path)
    def remount(self, opts):
        subprocess.run(['mount', '-o', f'remount,{opts}', str(self.path)], check=True, capture_output=True)


@contextlib.contextmanager
def tmpfs(path, size):
    "A tmpfs of `size` bytes mounted at `path` (skip the test where that is not allowed)"
    if os.geteuid() != 0 or not shutil.which('mount'):
        pytest.skip('mounting a tmpfs needs root; the patched-writer tests cover this')
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={int(size)},mode=0755', 'tmpfs', str(path)],
                       capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()}); the patched-writer tests cover this')
    try: yield Tmpfs(path)
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)


def clear_error(p, *words):
    "The CLI failed at run time (exit status 1) with one 'error: ...' line saying `words` (any case), no traceback"
    err = p.stderr
    # not -7 / 135 (SIGBUS), not 2 (a disk is no bad input)
    assert p.returncode == 1, (p.returncode, err[-2000:])
    assert 'Traceback' not in err and 'error:' in err, err[-3000:]
    for w in words: assert w.lower() in err.lower(), (w, err[-2000:])


@pytest.mark.timeout(300)
def test_train_cli_disk_full_then_resume(faults_data, faults_cli, faults_reference_run, tmp_path, fault):
    fault.describe('Disk', 'sparse3d_train on a real tmpfs that fills up at epoch 2, then more space and --resume',
                   'one-line error naming the checkpoint, no traceback; every .pt loads; after --resume the weights '
                   'equal an uninterrupted run')
    fault.case()
    size = (faults_reference_run/'checkpoints'/'latest.pt').stat().st_size
    cfg = tmp_path/'cfg.yaml'
    cfg.write_text(faults_data['config'].read_text().replace('save_freq: 1', 'save_freq: 100'))
    # epoch 1: latest.pt + best.pt fit; epoch 2's latest.pt does not
    with tmpfs(tmp_path/'mnt', 2.5 * size) as fs:
        out = fs.path/'run'
        p = faults_cli.run(faults_cli.bin/'sparse3d_train', '--config', cfg, '--input_dir', faults_data['proc'],
                           '--output_dir', out, ok=False)
        clear_error(p, 'disk is full', '.pt: cannot write it')
        # all load
        assert {q.name: load_checkpoint(q)['epoch'] for q in (out/'checkpoints').glob('*.pt')}['latest.pt'] == 1
        assert leftovers(out) == []
        fs.remount(f'size={int(8 * size)}')
        faults_cli.run(faults_cli.bin/'sparse3d_train', '--input_dir', faults_data['proc'], '--output_dir', out,
                       '--resume')
        a = load_checkpoint(out/'checkpoints'/'latest.pt')
        b = load_checkpoint(faults_reference_run/'checkpoints'/'latest.pt')
        assert a['epoch'] == 3 and all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])


@pytest.mark.timeout(300)
def test_train_cli_read_only_run_folder(faults_data, faults_cli, faults_reference_run, tmp_path, fault):
    fault.describe('Disk', 'sparse3d_train --resume into a run folder on a read-only file system',
                   'one-line error saying read-only before any training; checkpoints byte-identical')
    fault.case()
    size = (faults_reference_run/'checkpoints'/'latest.pt').stat().st_size
    with tmpfs(tmp_path/'mnt', 2 * size) as fs:
        out = fs.path/'run'
        (out/'checkpoints').mkdir(parents=True)
        shutil.copy(faults_reference_run/'config.yaml', out/'config.yaml')
        shutil.copy(faults_reference_run/'checkpoints'/'epoch_1.pt', out/'checkpoints'/'latest.pt')
        before = tree_digest(out)
        fs.remount('ro')
        p = faults_cli.run(faults_cli.bin/'sparse3d_train', '--input_dir', faults_data['proc'], '--output_dir', out,
                           '--resume', ok=False)
        clear_error(p, 'read-only')
        assert 'epoch 2/' not in p.stderr and tree_digest(out) == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_cli_new_run_folder_on_read_only_fs(faults_data, faults_cli, tmp_path, fault):
    fault.describe('Disk', 'sparse3d_train with a new --output_dir on a read-only file system',
                   'one-line error, no traceback')
    fault.case()
    with tmpfs(tmp_path/'mnt', 1e6) as fs:
        fs.remount('ro')
        p = faults_cli.run(faults_cli.bin/'sparse3d_train', '--config', faults_data['config'],
                           '--input_dir', faults_data['proc'],
                           '--output_dir', fs.path/'run', ok=False)
        clear_error(p, 'read-only')


def du(root):
    "Bytes `root` takes on a tmpfs: every file rounded up to whole 4 KiB pages"
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in Path(root).rglob('*') if p.is_file())


@pytest.mark.timeout(300)
@pytest.mark.parametrize('where', [pytest.param('sequences', marks=pytest.mark.slow), 'packing'])
def test_preprocess_cli_disk_full_then_rerun(faults_data, faults_cli, tmp_path, fault, where):
    fault.describe('Disk', f'sparse3d_preprocess on a real tmpfs that fills up while writing {where}, then more space '
                   'and a re-run', 'one-line error naming the file, no traceback, no crash (packed arrays are '
                   'memory-mapped: a full disk must not be a SIGBUS); the re-run output is byte-identical to an '
                   'undisturbed run')
    fault.case()
    ref = faults_data['proc']/'chair'
    per_seq = du(ref) - du(ref/'packed')
    size = 64 * 1024 if where == 'sequences' else per_seq + 64 * 1024 + du(ref/'packed') // 2   # packing cannot fit
    with tmpfs(tmp_path/'mnt', size) as fs:
        out = fs.path/'proc'
        args = [faults_cli.bin/'sparse3d_preprocess', '--input_dir', faults_data['co3d'], '--output_dir', out,
                '--image_size', 64, '--workers', 2]
        p = faults_cli.run(*args, ok=False)
        clear_error(p, 'disk is full', str(out))
        if where == 'packing': assert '6 sequences processed' in p.stdout, p.stdout
        fs.remount('size=200m')
        faults_cli.run(*args)
        skip = lambda t: {k: v for k, v in t.items() if not k.endswith('preprocess_report.json')}
        assert skip(tree_digest(out)) == skip(tree_digest(faults_data['proc']))
