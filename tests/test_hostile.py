"Careless and hostile inputs to training: never a silent untrained model, one message and exit 2, no folder left behind"
import json, math, shutil, pandas as pd, pytest
from test_train import run_cli

BASE = ['--pretrained', 'no', '--size', '32', '--epochs', '1']

def _strict_json(path):
    def _no_constant(c): raise ValueError(f'{c} is not JSON')
    return json.loads(path.read_text(), parse_constant=_no_constant)

def test_small_data_caps_batch_size_and_trains(flower_data, tmp_path):
    "48 images and the default --bs 64: fastai would drop the only partial batch and train nothing"
    out = tmp_path/'run'
    r = run_cli('--data', flower_data[0], '--out', out, '--pretrained', 'no', '--size', '32', '--epochs', '2')
    assert r.returncode==0, r.stderr
    assert r.stderr.count('batch size 64 is more than the 39 training images; using bs=39')==1
    hist = pd.read_csv(out/'history.csv')
    assert len(hist)==2 and hist['train_loss'].map(math.isfinite).all()
    assert hist['train_loss'].iloc[-1] < hist['train_loss'].iloc[0] # it learned something
    m = _strict_json(out/'metrics.json')
    assert m['bs']==64 and (out/'export.pkl').is_file()

@pytest.mark.parametrize('args,msg', [
    (['--epochs', '0'], '--epochs 0: must be a whole number of at least 1'),
    (['--epochs', '-1'], '--epochs -1: must be a whole number of at least 1'),
    (['--bs', '0'], '--bs 0: must be a whole number of at least 1'),
    (['--size', '7'], '--size 7: must be a whole number of at least 32'),
    (['--workers', '-3'], '--workers -3: must be a whole number of at least 0'),
    (['--freeze-epochs', '-1'], '--freeze-epochs -1'),
    (['--valid-pct', '-0.5'], '--valid-pct -0.5: must be between 0 and 1'),
    (['--valid-pct', '0'], '--valid-pct 0.0: must be between 0 and 1'),
    (['--valid-pct', '1.5'], '--valid-pct 1.5: must be between 0 and 1'),
])
def test_bad_numbers_exit_2_and_leave_no_folder(flower_data, tmp_path, args, msg):
    out = tmp_path/'run'
    r = run_cli('--data', flower_data[0], '--out', out, *BASE, *args)
    assert r.returncode==2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not out.exists()

def _csv(tmp_path, flower_data, rows=None, is_valid=None):
    df = pd.read_csv(flower_data[1])[['image','count']]
    if rows is not None: df = df.head(rows)
    if is_valid is not None: df['is_valid'] = is_valid
    df.to_csv(tmp_path/'counts.csv', index=False)
    return tmp_path/'counts.csv'

@pytest.mark.parametrize('rows,is_valid,msg', [
    (None, 'false', 'no validation images (set by its is_valid column)'),
    (None, 'true', 'no training images (set by its is_valid column)'),
    (1, None, 'no validation images (set by --valid-pct'),
])
def test_no_validation_or_training_rows_exit_2(flower_data, tmp_path, rows, is_valid, msg):
    csv = _csv(tmp_path, flower_data, rows, is_valid)
    out = tmp_path/'run'
    r = run_cli('--data', csv, '--img-dir', flower_data[0]/'images', '--out', out, *BASE)
    assert r.returncode==2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not out.exists()

def test_out_that_is_a_file_exits_2(flower_data, tmp_path):
    (tmp_path/'taken').write_text('keep me')
    r = run_cli('--data', flower_data[0], '--out', tmp_path/'taken', *BASE)
    assert r.returncode==2 and 'is a file, not a folder' in r.stderr and 'Traceback' not in r.stderr
    assert (tmp_path/'taken').read_text()=='keep me'

def test_failed_run_keeps_an_existing_folder(flower_data, tmp_path):
    "A run that fails in a folder the user already had removes nothing of theirs"
    out = tmp_path/'mine'; out.mkdir(); (out/'notes.txt').write_text('mine')
    csv = _csv(tmp_path, flower_data, is_valid='true')
    r = run_cli('--data', csv, '--img-dir', flower_data[0]/'images', '--out', out, *BASE)
    assert r.returncode==2 and (out/'notes.txt').read_text()=='mine'

def test_diverging_loss_stops_and_exports_nothing(flower_data, tmp_path):
    "A learning rate far too high: the loss stops being a number, and no model is exported"
    out = tmp_path/'run'
    r = run_cli('--data', flower_data[0], '--out', out, *BASE, '--bs', '8', '--lr', '10', '--loss', 'l1', '--precision', 'fp32')
    assert r.returncode==2 and 'training diverged' in r.stderr and 'Traceback' not in r.stderr, r.stdout + r.stderr
    assert not out.exists()

def test_metrics_json_is_strict_when_counts_are_all_equal(flower_data, tmp_path):
    "R² is undefined when every count is the same: metrics.json says null, not NaN"
    df = pd.read_csv(flower_data[1])[['image','count']].assign(count=3)
    df.to_csv(tmp_path/'counts.csv', index=False)
    r = run_cli('--data', tmp_path/'counts.csv', '--img-dir', flower_data[0]/'images', '--out', tmp_path/'run', *BASE, '--bs', '8')
    assert r.returncode==0, r.stderr
    m = _strict_json(tmp_path/'run'/'metrics.json')
    assert m['r2'] is None and math.isfinite(m['mae'])
