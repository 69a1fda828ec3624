"""Numerics: NaN and inf injected into the data, into a batch, into the loss and into the gradients. What must hold:
a corrupt packed split is refused up front, naming the sequence; a non-finite step is skipped with a warning and the
run goes on with finite weights; repeated failures stop the run cleanly (a `Sparse3DError`, no traceback from the
CLI) with the last good checkpoint kept, loadable and finite."""
import json, shutil, sys, warnings

import numpy as np
import pytest
import torch

import sparse3d.train as train_mod
from sparse3d.config import DataError, Sparse3DError, load_config
from sparse3d.data import MultiViewDataset
from sparse3d.train import fit, load_checkpoint


def finite_state(sd):
    "The names of the float tensors of state dict `sd` that hold NaN or inf: [] when every one is finite"
    return [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def run_fit(cfg, proc, out, **kw):
    "fit() recording its warnings: (state or exception, [warning messages])"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        try: res = fit(cfg, proc, out, progress=False, **kw)
        except Sparse3DError as e: res = e
    return res, [str(x.message) for x in w if 'non-finite' in str(x.message)]


# --- NaN / inf in the packed data --------------------------------------------------------------------------------

@pytest.mark.parametrize('what', ['R nan', 't inf', 'K -inf'])
def test_non_finite_cameras_in_packed_split_refused(faults_data, tmp_path, fault, what):
    fault.describe('Numerics', 'NaN, inf or -inf in the packed cameras (R, t or K) of one training object',
                   'DataError naming the packed folder and the sequence before any step (not a NaN loss mid-run)')
    fault.case()
    proc = tmp_path/'proc'
    shutil.copytree(faults_data['proc'], proc)
    d = proc/'chair'/'packed'/'train'
    key, val = what.split()
    a = np.load(d/f'{key}.npy')
    names = json.loads((d/'index.json').read_text())['sequences']
    offsets = np.load(d/'offsets.npy')
    a[offsets[2] + 1].flat[0] = float(val)                      # a frame of the third object
    np.save(d/f'{key}.npy', a)
    with pytest.raises(DataError) as e: MultiViewDataset(proc, 'train', num_views=2)
    assert str(d) in str(e.value) and names[2] in str(e.value) and 'NaN or inf' in str(e.value), str(e.value)
    with pytest.raises(DataError): fit(load_config(faults_data['config']), proc, tmp_path/'run', progress=False)
    assert not (tmp_path/'run'/'checkpoints').exists()


# --- NaN in a batch (a transform, a callback, a corrupt image decoded as NaN) -----------------------------------------

@pytest.fixture(scope='module')
def nan_batch_run(faults_data, tmp_path_factory):
    "fit() where every batch holding one particular training object has NaN images"
    out = tmp_path_factory.mktemp('nan_batch')/'run'
    real = MultiViewDataset.__getitem__
    victim = json.loads((faults_data['proc']/'chair'/'packed'/'train'/'index.json').read_text())['sequences'][0]
    def poisoned(self, i):
        d = real(self, i)
        if self.train and self.names[i] == victim: d.images = torch.full_like(d.images, float('nan'))
        return d
    MultiViewDataset.__getitem__ = poisoned
    try: state, warned = run_fit(load_config(faults_data['config'], n_epochs=2), faults_data['proc'], out)
    finally: MultiViewDataset.__getitem__ = real
    return state, warned, out


def test_nan_batch_skipped_with_warning(nan_batch_run, fault):
    fault.describe('Numerics', 'NaN images in every batch that holds one training object (2 epochs)',
                   'each such step skipped with a warning; the run finishes; parameters finite')
    state, warned, out = nan_batch_run
    fault.case(len(warned))
    assert not isinstance(state, Exception), state
    assert len(warned) == 2 and all(h['skipped_steps'] == 1 for h in state.history), (warned, state.history)
    params = {k: v for k, v in state.model.named_parameters()}
    assert finite_state(params) == []
    assert load_checkpoint(out/'checkpoints'/'latest.pt')['epoch'] == 2


def test_nan_batch_leaves_no_nan_in_checkpoint(nan_batch_run, fault):
    fault.describe('Numerics', 'NaN images in a batch: the model state after the skipped step',
                   'no NaN anywhere in the model state or the checkpoint (BatchNorm statistics included)')
    state, warned, out = nan_batch_run
    fault.case()
    assert not isinstance(state, Exception), state
    assert finite_state(state.model.state_dict()) == []
    assert finite_state(load_checkpoint(out/'checkpoints'/'latest.pt')['model']) == []


# --- NaN / inf in the loss or the gradients ---------------------------------------------------------------------------

def poison_loss(monkeypatch, kind, steps):
    "Make the encoder+generator loss non-finite (or its gradient NaN) at the optimiser steps in `steps`"
    real, seen = train_mod.vae_gan_loss, {'n': 0}
    def loss(out, target, d_recon, d_prior, step, total, cfg):
        terms = real(out, target, d_recon, d_prior, step, total, cfg)
        seen['n'] += 1
        if seen['n'] - 1 in steps:
            if kind == 'nan loss': terms['total'] = terms['total'] * float('nan')
            elif kind == 'inf loss': terms['total'] = terms['total'] + float('inf')
            # value unchanged, gradient NaN
            else: terms['total'] = terms['total'] + 0 * torch.sqrt((out.mu - out.mu.detach()).abs()).sum()
        return terms
    monkeypatch.setattr(train_mod, 'vae_gan_loss', loss)


@pytest.mark.parametrize('kind', ['nan loss', pytest.param('inf loss', marks=pytest.mark.slow),
                                  pytest.param('nan gradient', marks=pytest.mark.slow)])
def test_non_finite_step_skipped_run_continues(faults_data, tmp_path, monkeypatch, fault, kind):
    fault.describe('Numerics', f'{kind} at one step of epoch 2', 'that step skipped with a warning naming the epoch; '
                   'the run finishes with finite weights; the other steps count')
    fault.case()
    poison_loss(monkeypatch, kind, {2})
    state, warned = run_fit(load_config(faults_data['config'], n_epochs=2), faults_data['proc'], tmp_path)
    assert not isinstance(state, Exception), state
    assert len(warned) == 1 and 'epoch 2' in warned[0], warned
    assert [h['skipped_steps'] for h in state.history] == [0, 1] and state.step == 3
    assert finite_state(state.model.state_dict()) == []
    assert finite_state(load_checkpoint(tmp_path/'checkpoints'/'latest.pt')['model']) == []


def test_repeated_nan_stops_cleanly_keeps_last_good_checkpoint(faults_data, tmp_path, monkeypatch, fault):
    fault.describe('Numerics', 'NaN loss at every step from epoch 2 on (limit: 3 in a row)',
                   'Sparse3DError "training diverged" naming the last good checkpoint; it loads, is finite, and its '
                   'encoder and generator are those of epoch 1 (nothing learnt from NaN)')
    fault.case()
    poison_loss(monkeypatch, 'nan loss', set(range(2, 1000)))
    cfg = load_config(faults_data['config'], n_epochs=4)
    res, warned = run_fit(cfg, faults_data['proc'], tmp_path, max_skipped=3)
    assert isinstance(res, Sparse3DError) and 'training diverged' in str(res), res
    latest = tmp_path/'checkpoints'/'latest.pt'
    assert str(latest) in str(res) and len(warned) == 3 and load_checkpoint(latest)['epoch'] == 2
    ck, first = load_checkpoint(latest), load_checkpoint(tmp_path/'checkpoints'/'epoch_1.pt')
    assert finite_state(ck['model']) == []
    weights = [k for k, _ in train_mod.VAEGAN(cfg).named_parameters() if k.startswith(('encoder.', 'generator.'))]
    assert weights and all(torch.equal(ck['model'][k], first['model'][k]) for k in weights)


DIVERGING_TRAIN = '''
import torch, sparse3d.train as t
real = t.vae_gan_loss
def loss(*a, **k):
    terms = real(*a, **k)
    terms['total'] = terms['total'] * float('nan')
    return terms
t.vae_gan_loss = loss
t.train_cli()
'''


@pytest.mark.slow
def test_cli_diverging_run_stops_with_one_line(faults_data, faults_cli, tmp_path, fault):
    fault.describe('Numerics', 'sparse3d_train whose loss is NaN at every step',
                   'exit status 1, warnings then one "error: training diverged" line, no traceback')
    fault.case()
    script = tmp_path/'diverge.py'
    script.write_text(DIVERGING_TRAIN)
    p = faults_cli.run(sys.executable, script, '--config', faults_data['config'], '--input_dir', faults_data['proc'],
                       '--output_dir', tmp_path/'run', '--n_epochs', 5, ok=False)
    assert p.returncode == 1 and 'sparse3d_train: error: training diverged' in p.stderr, p.stderr[-2000:]
    assert 'Traceback' not in p.stderr, p.stderr[-2000:]
