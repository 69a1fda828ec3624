"""Load: a few hundred small sequences through preprocessing with several workers, and long runs of the loader and of
training. What must hold: the parallel output is byte-identical to one worker's; worker processes see each epoch's
views and a resumed run equals an uninterrupted one with them; memory stays flat from epoch to epoch (RSS of the
training process, and of the loader and its workers, sampled every epoch with psutil)."""
import hashlib, json, shutil, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.data import MultiViewDataset, make_loader

N_SEQ, N_FRAMES, SIZE = 200, 4, 32


def tree_digest(root, skip=('preprocess_report.json',)):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob('*')) if p.is_file() and p.name not in skip}


@pytest.fixture(scope='module')
def big(faults_cli, tmp_path_factory):
    "200 synthetic sequences x 4 frames at 32 px, preprocessed with 1 worker and with 3"
    d = tmp_path_factory.mktemp('load')
    faults_cli.run(faults_cli.bin/'sparse3d_synth', '--out', d/'co3d', '--sequences', N_SEQ, '--frames', N_FRAMES,
                   '--image_size', SIZE, '--seed', 1, '--workers', 2, '--quiet', timeout=900)
    out = {}
    for w in (1, 3):
        p = faults_cli.run(faults_cli.bin/'sparse3d_preprocess', '--input_dir', d/'co3d', '--output_dir', d/f'proc{w}',
                           '--image_size', SIZE, '--workers', w, timeout=900)
        assert f'{N_SEQ} sequences processed' in p.stdout and ' 0 failed' in p.stdout, p.stdout[-2000:]
        out[w] = d/f'proc{w}'
    return dict(root=d, co3d=d/'co3d', proc=out)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_preprocess_many_sequences_workers_byte_identical(big, fault):
    fault.describe('Load', f'preprocessing {N_SEQ} sequences x {N_FRAMES} frames with 3 worker processes',
                   'every output file (packed arrays, crops, voxels, poses, metadata, splits) byte-identical to '
                   '1 worker')
    fault.case(N_SEQ)
    a, b = tree_digest(big['proc'][1]), tree_digest(big['proc'][3])
    assert len(a) > N_SEQ * N_FRAMES * 3 and a == b, sorted(set(a.items()) ^ set(b.items()))[:5]   # image, mask, pose
    idx = json.loads((big['proc'][1]/'chair'/'packed'/'train'/'index.json').read_text())
    images = np.load(big['proc'][1]/'chair'/'packed'/'train'/'images.npy', mmap_mode='r')
    assert images.shape == (idx['n_frames'], SIZE, SIZE, 3), images.shape


def test_worker_processes_see_each_epochs_views(faults_data, fault):
    fault.describe('Load', 'training loader with 2 worker processes over 3 epochs',
                   'each epoch draws new views, exactly those drawn without workers (workers do not keep epoch 0)')
    fault.case(3)
    ds = MultiViewDataset(faults_data['proc'], 'train', num_views=2)
    seen = {}
    for w in (0, 2):
        dl = make_loader(ds, len(ds), shuffle=False, workers=w)
        seen[w] = []
        for e in range(3):
            ds.set_epoch(e)
            seen[w].append(next(iter(dl))['views'])
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[2]))
    assert not torch.equal(seen[2][0], seen[2][1]) or not torch.equal(seen[2][1], seen[2][2])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_with_worker_processes_equals_uninterrupted(faults_data, faults_cli, tmp_path, fault):
    fault.describe('Load', 'sparse3d_train with 2 data-loading workers: 1 epoch, then --resume to 3, against 3 in '
                   'one go',
                   'identical weights (the workers and the shuffling are a function of seed and epoch)')
    fault.case()
    cfg = tmp_path/'cfg.yaml'
    cfg.write_text(faults_data['config'].read_text().replace('workers: 0', 'workers: 2'))
    train = lambda out, *a: faults_cli.run(faults_cli.bin/'sparse3d_train', '--config', cfg,
                                           '--input_dir', faults_data['proc'],
                                           '--output_dir', out, *a)
    train(tmp_path/'a')
    shutil.copytree(tmp_path/'a', tmp_path/'b')
    # as if stopped after epoch 1
    (tmp_path/'b'/'checkpoints'/'epoch_1.pt').replace(tmp_path/'b'/'checkpoints'/'latest.pt')
    train(tmp_path/'b', '--resume')
    from sparse3d.train import load_checkpoint
    a, b = (load_checkpoint(tmp_path/r/'checkpoints'/'latest.pt')['model'] for r in 'ab')
    assert all(torch.equal(a[k], b[k]) for k in a)


RSS_TRAIN = '''
import json, sys, psutil
from sparse3d.config import load_config
from sparse3d.train import fit
proc = psutil.Process()
rss = []
class Sample:
    def after_epoch(self, state): rss.append(proc.memory_info().rss)
cfg = load_config({config!r}, n_epochs={epochs}, save_freq=1000, vis_freq=1000)
fit(cfg, {proc_dir!r}, {out!r}, callbacks=[Sample()], progress=False)
print(json.dumps(rss))
'''

RSS_LOADER = '''
import json, psutil
from sparse3d.data import MultiViewDataset, make_loader
me = psutil.Process()
ds = MultiViewDataset({proc_dir!r}, 'train', num_views=4)
dl = make_loader(ds, 16, workers=2, seed=0)
def total():
    n = me.memory_info().rss
    for c in me.children(recursive=True):
        try: n += c.memory_info().rss
        except psutil.Error: pass
    return n
rss = []
for epoch in range({epochs}):
    ds.set_epoch(epoch)
    n, peak = 0, 0
    for i, b in enumerate(dl):
        n += len(b['images'])
        if i % 3 == 2: peak = max(peak, total())      # while the workers are alive
    assert n == len(ds)
    rss.append(peak)
print(json.dumps(rss))
'''


def flat(rss, warmup, tol_mb):
    "Growth after `warmup` epochs, in MB, and whether it stays under `tol_mb`"
    mb = [r / 2 ** 20 for r in rss]
    growth = max(mb[warmup:]) - mb[warmup - 1]
    return growth, growth < tol_mb, [round(m) for m in mb]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_training_memory_flat_across_epochs(faults_data, faults_cli, tmp_path, fault):
    epochs = 20
    fault.describe('Load', 'training (the tiny config: 2 steps, validation and a checkpoint per epoch) for '
                   f'{epochs} epochs, '
                   'RSS of the process sampled after every epoch', 'no growth after the third epoch beyond 40 MB')
    fault.case(epochs)
    script = tmp_path/'rss_train.py'
    script.write_text(RSS_TRAIN.format(config=str(faults_data['config']), epochs=epochs,
                                       proc_dir=str(faults_data['proc']),
                                       out=str(tmp_path/'run')))
    rss = json.loads(faults_cli.run(sys.executable, script, timeout=1500).stdout.strip().splitlines()[-1])
    growth, ok, mb = flat(rss[:-1], 3, 40)             # the last epoch also draws the sample figure (matplotlib)
    print(f'training RSS per epoch (MB): {mb}')
    assert len(rss) == epochs and ok, f'RSS grew by {growth:.0f} MB: {mb}'


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_loader_memory_flat_across_epochs(big, faults_cli, tmp_path, fault):
    epochs = 15
    fault.describe('Load', f'the training loader alone (2 worker processes, 4 views) for {epochs} epochs, RSS of it '
                   'and its workers',
                   'no growth after the third epoch beyond 40 MB')
    fault.case(epochs)
    script = tmp_path/'rss_loader.py'
    script.write_text(RSS_LOADER.format(proc_dir=str(big['proc'][1]), epochs=epochs))
    rss = json.loads(faults_cli.run(sys.executable, script, timeout=1500).stdout.strip().splitlines()[-1])
    growth, ok, mb = flat(rss, 3, 40)
    print(f'loader RSS per epoch (MB, with workers): {mb}')
    assert len(rss) == epochs and ok, f'RSS grew by {growth:.0f} MB: {mb}'
