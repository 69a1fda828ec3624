"""The command lines end to end, as a user runs them: synthetic CO3D root -> preprocess -> train -> resume,
bad values refused before any work, and DistributedDataParallel with two gloo processes."""
import json, shutil, sys

import numpy as np
import pytest

from conftest import CLI_BIN as BIN, run_cli as run


@pytest.fixture(scope='module')
def processed(tmp_path_factory):
    "A synthetic root of 8 chairs and its processed, split and packed form"
    d = tmp_path_factory.mktemp('pipe')
    run(BIN/'sparse3d_synth', '--out', d/'co3d', '--sequences', 8, '--frames', 6, '--image_size', 64, '--seed', 3,
        '--workers', 2)
    p = run(BIN/'sparse3d_preprocess', '--input_dir', d/'co3d', '--output_dir', d/'proc', '--image_size', 64,
            '--workers', 2)
    assert '8 sequences processed' in p.stdout and '0 failed' in p.stdout, p.stdout
    return d


def test_preprocess_layout_and_resume(processed):
    chair = processed/'proc'/'chair'
    splits = json.loads((chair/'splits.json').read_text())
    assert sum(len(splits[k]) for k in ('train', 'val', 'test')) == 8
    seq = splits['train'][0]
    meta = json.loads((chair/f'{seq}_processed'/'sequence_meta.json').read_text())
    assert len(meta['frames']) == 6 and (chair/f'{seq}_dataset_instance'/'seq.binvox').exists()
    assert np.load(chair/'packed'/'train'/'images.npy', mmap_mode='r').shape[1:] == (64, 64, 3)
    again = run(BIN/'sparse3d_preprocess', '--input_dir', processed/'co3d', '--output_dir', processed/'proc',
                '--image_size', 64)
    assert '0 sequences processed, 8 already done' in again.stdout


def test_one_worker_equals_two(processed, tmp_path):
    "Parallel preprocessing gives the same packed arrays as a single worker"
    run(BIN/'sparse3d_preprocess', '--input_dir', processed/'co3d', '--output_dir', tmp_path, '--image_size', 64,
        '--workers', 1)
    for name in ('images', 'masks', 'K', 'R', 't', 'voxels'):
        for split in ('train', 'val', 'test'):
            a = np.load(processed/'proc'/'chair'/'packed'/split/f'{name}.npy')
            b = np.load(tmp_path/'chair'/'packed'/split/f'{name}.npy')
            assert np.array_equal(a, b), (name, split)


def test_depth_crops_on_request(processed, tmp_path):
    "Depth crops are written only with --depth_crops; asking for them later redoes every sequence (settings changed)"
    chair = processed/'proc'/'chair'
    seq = json.loads((chair/'splits.json').read_text())['train'][0]
    assert not (chair/f'{seq}_dataset_instance'/'depths').exists()
    shutil.copytree(processed/'proc', tmp_path/'proc')
    p = run(BIN/'sparse3d_preprocess', '--input_dir', processed/'co3d', '--output_dir', tmp_path/'proc', '--image_size',
            64, '--depth_crops', '--workers', 2)
    assert '8 sequences processed, 0 already done' in p.stdout, p.stdout
    inst = tmp_path/'proc'/'chair'/f'{seq}_dataset_instance'
    assert len(list((inst/'depths').glob('frame*.png'))) == 6 == len(list((inst/'depth_masks').glob('frame*.png')))
    for name in ('images', 'masks', 'voxels'):                  # the depths change nothing the model reads
        a = np.load(chair/'packed'/'train'/f'{name}.npy')
        assert np.array_equal(a, np.load(tmp_path/'proc'/'chair'/'packed'/'train'/f'{name}.npy')), name


def test_preprocess_holds_out_and_packs_all(processed, tmp_path):
    "`sparse3d_preprocess --hold_out --pack_all` splits as `sparse3d_split` does; --no_split with them is refused"
    import shutil
    from sparse3d.co3d import Co3dCategory
    families = {n: s.annotation.meta['components']['family']
                for n, s in Co3dCategory(processed/'co3d', 'chair').sequences.items()}
    family = sorted(families.values())[0]
    shutil.copytree(processed/'proc', tmp_path/'proc')
    p = run(BIN/'sparse3d_preprocess', '--input_dir', processed/'co3d', '--output_dir', tmp_path/'proc',
            '--image_size', 64, '--hold_out', f'family={family}', '--pack_all')
    assert '8 already done' in p.stdout and 'heldout' in p.stdout and 'all packed' in p.stdout, p.stdout
    splits = json.loads((tmp_path/'proc'/'chair'/'splits.json').read_text())
    assert splits['heldout'] == sorted(n for n, f in families.items() if f == family), (splits, families)
    assert not set(splits['heldout']) & set(splits['train'] + splits['val'] + splits['test'])
    packed = tmp_path/'proc'/'chair'/'packed'
    assert json.loads((packed/'all'/'index.json').read_text())['sequences'] == sorted(families)
    assert json.loads((packed/'heldout'/'index.json').read_text())['sequences'] == splits['heldout']
    p = run(BIN/'sparse3d_preprocess', '--input_dir', processed/'co3d', '--output_dir', tmp_path/'proc',
            '--image_size', 64, '--hold_out', 'family=sofa', '--no_split', ok=False)
    assert p.returncode == 2 and '--hold_out and --pack_all shape the split' in p.stderr, p.stderr
    p = run(BIN/'sparse3d_preprocess', '--input_dir', processed/'co3d', '--output_dir', tmp_path/'new',
            '--image_size', 64, '--hold_out', 'family=throne', ok=False)
    assert p.returncode == 2 and "unknown family type 'throne'" in p.stderr and not (tmp_path/'new').exists()


@pytest.fixture(scope='module')
def capture(tmp_path_factory):
    "A capture-realism root of 3 sequences (seed 3: preprocessing keeps two and flags one), processed, not split"
    d = tmp_path_factory.mktemp('capture')
    run(BIN/'sparse3d_synth', '--out', d/'co3d', '--sequences', 3, '--frames', 8, '--image_size', 160, '--seed', 3,
        '--realism', 'capture', '--workers', 1, '--quiet')
    run(BIN/'sparse3d_preprocess', '--input_dir', d/'co3d', '--output_dir', d/'proc', '--image_size', 64,
        '--workers', 1, '--no_split')
    return d


def test_extract_poses_agrees_with_preprocessing(capture, tmp_path):
    "Both commands normalise by the same cleaned point cloud, and fail the same way on a flagged sequence"
    report = json.loads((capture/'proc'/'chair'/'preprocess_report.json').read_text())
    assert (len(report['done']), len(report['flagged'])) == (2, 1), report
    name = sorted(report['done'])[0]
    p = run(BIN/'sparse3d_extract_poses', '--input_dir', capture/'co3d', '--output_dir', tmp_path, '--sequence', name)
    assert '8 poses written' in p.stdout, p.stdout
    meta = json.loads((capture/'proc'/'chair'/f'{name}_processed'/'sequence_meta.json').read_text())
    for fr in meta['frames']:
        pose = json.loads((tmp_path/'chair'/f'{name}_processed'/'poses'/f"frame{fr['frame_number']:06d}_pose.json")
                          .read_text())['normalized']
        for k in ('R', 't'): np.testing.assert_allclose(pose[k], fr['camera'][k], rtol=0, atol=1e-12)
    flagged = next(iter(report['flagged']))
    a = run(BIN/'sparse3d_extract_poses', '--input_dir', capture/'co3d', '--output_dir', tmp_path,
            '--sequence', flagged, ok=False)
    b = run(BIN/'sparse3d_preprocess_sequence', '--input_dir', capture/'co3d', '--output_dir', tmp_path/'b',
            '--sequence', flagged, '--image_size', 64, ok=False)
    error = lambda p, prog: p.stderr.strip().splitlines()[-1].removeprefix(f'{prog}: error: ')
    assert a.returncode == b.returncode != 0, (a.stderr, b.stderr)
    assert error(a, 'sparse3d_extract_poses') == error(b, 'sparse3d_preprocess_sequence') \
        == report['flagged'][flagged]['reason'], (a.stderr, b.stderr)
    assert not (tmp_path/'chair'/f'{flagged}_processed').exists()


def test_mixed_root_preprocesses(tmp_path):
    "A mixed root (square clean frames, 4:3 capture ones) preprocesses into square crops of one size"
    run(BIN/'sparse3d_synth', '--out', tmp_path/'co3d', '--sequences', 4, '--frames', 4, '--image_size', 64,
        '--seed', 1, '--realism', 'mixed', '--workers', 1, '--quiet')
    from sparse3d.co3d import Co3dCategory
    cat = Co3dCategory(tmp_path/'co3d', 'chair')
    sizes = {s.annotation.meta['realism']['condition']: s.frames[0].image_size for s in cat.sequences.values()}
    assert sizes['clean'] == (64, 64) and sorted(sizes['capture']) == [48, 64], sizes
    run(BIN/'sparse3d_preprocess', '--input_dir', tmp_path/'co3d', '--output_dir', tmp_path/'proc',
        '--image_size', 32, '--workers', 1, '--no_split')
    report = json.loads((tmp_path/'proc'/'chair'/'preprocess_report.json').read_text())
    assert report['failed'] == {} and len(report['done']) + len(report['flagged']) == 4, report
    clean = [n for n, s in cat.sequences.items() if s.annotation.meta['realism']['condition'] == 'clean']
    assert set(clean) <= set(report['done']), report
    from PIL import Image
    for name in report['done']:
        inst = tmp_path/'proc'/'chair'/f'{name}_dataset_instance'
        assert {Image.open(p).size for p in (inst/'images').iterdir()} == {(32, 32)}


def test_bad_values_fail_before_work(processed, tmp_path):
    p = run(BIN/'sparse3d_train', '--input_dir', processed/'proc', '--output_dir', tmp_path/'r', '--batch_size', 0,
            ok=False)
    assert p.returncode != 0 and "'batch_size' = 0 is out of range; allowed: >= 1" in p.stderr
    p = run(BIN/'sparse3d_train', '--input_dir', processed/'proc', '--output_dir', tmp_path/'r',
            '--combine_type', 'sum', ok=False)
    assert "'mean' or 'max'" in p.stderr
    p = run(BIN/'sparse3d_train', '--input_dir', processed/'co3d', '--output_dir', tmp_path/'r', ok=False)
    assert 'no packed train split here' in p.stderr and 'sparse3d_preprocess' in p.stderr
    p = run(BIN/'sparse3d_preprocess', '--input_dir', tmp_path/'nothing', '--output_dir', tmp_path/'o', ok=False)
    assert 'dataset root not found' in p.stderr or 'not found' in p.stderr
    assert not (tmp_path/'r').exists()


@pytest.fixture(scope='module')
def small_cfg(processed):
    p = processed/'small.yaml'
    p.write_text('image_size: 64\nbatch_size: 2\nnum_views: 2\nz_size: 16\nn_epochs: 2\nsave_freq: 1\nvis_freq: 2\n'
                 'workers: 0\n')
    return p


def test_train_resume_cli(processed, small_cfg, tmp_path):
    run(BIN/'sparse3d_train', '--config', small_cfg, '--input_dir', processed/'proc', '--output_dir', tmp_path,
        '--n_epochs', 1, '--device', 'cpu')
    assert json.loads((tmp_path/'metrics.jsonl').read_text().splitlines()[-1])['epoch'] == 1
    p = run(BIN/'sparse3d_train', '--input_dir', processed/'proc', '--output_dir', tmp_path, '--n_epochs', 2, ok=False)
    assert 'already holds a run' in p.stderr
    p = run(BIN/'sparse3d_train', '--input_dir', processed/'proc', '--output_dir', tmp_path, '--resume',
            '--n_epochs', 2)
    assert 'done: 2 epochs' in p.stdout
    assert [json.loads(line)['epoch'] for line in (tmp_path/'metrics.jsonl').read_text().splitlines()] == [1, 2]
    assert (tmp_path/'checkpoints'/'epoch_1.pt').exists() and (tmp_path/'samples'/'epoch_2.png').exists()


def test_ddp_two_gloo_processes(processed, small_cfg, tmp_path):
    "torchrun with 2 CPU processes: the ranks end identical and the checkpoint loads in a single process"
    p = run(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'sparse3d.train',
            '--config', small_cfg, '--input_dir', processed/'proc', '--output_dir', tmp_path, '--n_epochs', 1,
            '--device', 'cpu')
    assert '2 processes: replicas identical: True' in p.stdout, p.stdout + p.stderr
    from sparse3d.train import load_checkpoint, load_model_weights, checkpoint_config
    from sparse3d.model import VAEGAN
    ck = load_checkpoint(tmp_path/'checkpoints'/'latest.pt')
    assert ck['world_size'] == 2 and ck['epoch'] == 1
    load_model_weights(VAEGAN(checkpoint_config(ck)), ck)
    q = run(BIN/'sparse3d_train', '--input_dir', processed/'proc', '--output_dir', tmp_path, '--resume',
            '--n_epochs', 2, '--device', 'cpu')
    assert 'done: 2 epochs' in q.stdout


def test_ddp_lifted_encoder(processed, tmp_path):
    "encoder: lifted under torchrun: one forward per step holds the lifted decoder too, the ranks end identical"
    cfg = tmp_path/'lifted.yaml'
    cfg.write_text('image_size: 64\nbatch_size: 2\nnum_views: 3\nz_size: 16\n'
                   'n_epochs: 1\nworkers: 0\nencoder: lifted\n')
    out = tmp_path/'run'
    p = run(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'sparse3d.train',
            '--config', cfg, '--input_dir', processed/'proc', '--output_dir', out, '--device', 'cpu')
    assert '2 processes: replicas identical: True' in p.stdout, p.stdout + p.stderr
    from sparse3d.train import load_checkpoint, load_model_weights, checkpoint_config
    from sparse3d.model import VAEGAN
    ck = load_checkpoint(out/'checkpoints'/'latest.pt')
    model = VAEGAN(checkpoint_config(ck))
    load_model_weights(model, ck)
    assert model.lifted is not None and model.refiner is None
