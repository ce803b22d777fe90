"Careless and hostile inputs to training: never a silent untrained model, one message and exit 2, no folder left behind"
import json, math, re, shutil, pandas as pd, pytest
from test_train import run_cli, train_here
from flowers import FlowersError
from flowers.train import train

BASE = ['--pretrained', 'no', '--size', '32', '--epochs', '1']
HERE = dict(pretrained='no', size=32, epochs=1) # BASE, as `train_here` takes it

def _strict_json(path):
    def _no_constant(c): raise ValueError(f'{c} is not JSON')
    return json.loads(path.read_text(), parse_constant=_no_constant)

def test_small_data_caps_batch_size_and_trains(flower_data, tmp_path):
    "48 images and --bs 64: fastai would drop the only partial batch and train nothing"
    out = tmp_path/'run'
    r = run_cli('--data', flower_data[0], '--out', out, '--pretrained', 'no', '--size', '32', '--epochs', '2', '--bs', '64')
    assert r.returncode==0, r.stderr # a run that took no step stops with exit 2 (`TrainingGuard`)
    assert r.stderr.count('batch size 64 is more than the 39 training images; using bs=39')==1
    hist = pd.read_csv(out/'history.csv') # (two steps in all: too few to promise a lower loss)
    assert len(hist)==2 and hist['train_loss'].map(math.isfinite).all()
    m = _strict_json(out/'metrics.json')
    assert m['bs']==64 and (out/'export.pkl').is_file()

def test_one_training_image_still_flags_unusual_photos(flower_data, tmp_path):
    "--valid-pct 0.98 leaves one training image: no spread to estimate, yet a noise picture must still be flagged, not every flag lost to NaN"
    import warnings, numpy as np
    from flowers.predict import Counter
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning) # numpy's covariance of one row warns, then gives NaN
        learn = train(flower_data[0], out=tmp_path, pretrained='no', size=32, epochs=1, valid_pct=.98, workers=0)
    assert len(learn.dls.train_ds)==1
    c = Counter.from_learner(learn, precision='fp32')
    noise = (np.random.default_rng(0).random((64, 64, 3))*255).astype(np.uint8)
    assert c.is_unusual(noise)

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
    (['--stride', '12'], "--stride 12: a count map's cells are 8 or 16 pixels apart"),
    (['--context', '9'], "--context 9: must be a whole number from 0 to 4"),
    (['--context', '-1'], "--context -1: must be a whole number from 0 to 4"),
])
def test_bad_numbers_are_refused_and_leave_no_folder(flower_data, tmp_path, args, msg):
    "Checked in-process, each one (the CLI's exit code is checked once below)"
    out = tmp_path/'run'
    kw = dict(zip([a.lstrip('-').replace('-','_') for a in (BASE+args)[::2]], (BASE+args)[1::2]))
    kw = {k:(v if k=='pretrained' else float(v) if k=='valid_pct' else int(v)) for k,v in kw.items()}
    with pytest.raises(FlowersError) as e: train(flower_data[1], out=out, **kw)
    assert msg in str(e.value)
    assert not out.exists()

def test_bad_number_on_the_command_line_exits_2(flower_data, tmp_path):
    r = run_cli('--data', flower_data[0], '--out', tmp_path/'run', *BASE, '--epochs', '0')
    assert r.returncode==2 and '--epochs 0: must be a whole number of at least 1' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'run').exists()

def _csv(tmp_path, flower_data, rows=None, is_valid=None):
    df = pd.read_csv(flower_data[1])[['image','count']]
    if rows is not None: df = df.head(rows)
    if is_valid is not None: df['is_valid'] = is_valid
    df.to_csv(tmp_path/'counts.csv', index=False)
    return tmp_path/'counts.csv'

@pytest.mark.parametrize('rows,is_valid,msg', [
    (None, 'false', 'no validation images (set by its is_valid column)'),
    (None, 'true', 'no training images (set by its is_valid column)'),
    (1, None, 'only 1 image; a model needs at least 2'),
    (4, None, 'no validation images (set by --valid-pct (valid_pct=)): --valid-pct 0.2 of its 4 images is less than one, and a model '
              "can't be checked without them. Give --valid-pct 0.25 or more (one image)"), # fastai rounds down: 0.2 of 4 is none
])
def test_no_validation_or_training_rows_are_refused(flower_data, tmp_path, rows, is_valid, msg):
    csv = _csv(tmp_path, flower_data, rows, is_valid)
    out = tmp_path/'run'
    with pytest.raises(FlowersError, match=re.escape(msg)): train(csv, img_dir=flower_data[0]/'images', out=out, size=32, epochs=1, pretrained='no')
    assert not out.exists()

def test_out_that_is_a_file_exits_2(flower_data, tmp_path):
    (tmp_path/'taken').write_text('keep me')
    r = run_cli('--data', flower_data[0], '--out', tmp_path/'taken', *BASE)
    assert r.returncode==2 and 'is a file, not a folder' in r.stderr and 'Traceback' not in r.stderr
    assert (tmp_path/'taken').read_text()=='keep me'

def test_size_that_cannot_fit_in_memory_exits_2(flower_data, tmp_path):
    "On a CPU the kernel kills a run out of memory without a word (a --size 4000 typo did): it is refused before the first step"
    r = run_cli('--data', flower_data[0], '--out', tmp_path/'run', '--pretrained', 'no', '--size', '60000', '--bs', '8', '--epochs', '1')
    assert r.returncode==2 and 'Traceback' not in r.stderr, r.stderr
    msg = re.search(r'error: --size 60000 with --bs 8: one training step would need at least ([\d.]+) GB, and this machine has ([\d.]+) GB free', r.stderr)
    assert msg and float(msg[1]) > float(msg[2]) and not (tmp_path/'run').exists()

STEP = """
import re, sys, torch
def peak(): return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])*1024 # this process's own (ru_maxrss carries its parent's over exec)
from flowers.data import count_dls
from flowers.learner import count_learner
learn = count_learner(count_dls(sys.argv[1], size=256, bs=8, verify=False), arch='resnet18', context=2, pretrained=False)
x = torch.rand(8, 3, 256, 256)
before = peak()
learn.model(x).sum().backward() # fp32: the most a step keeps
print(peak() - before)
"""

def test_memory_estimate_bounds_a_real_run(flower_data):
    "What `check_memory` counts is at most what a training step keeps: it never refuses a run that would fit"
    import subprocess, sys
    from flowers.memory import activation_bytes, KEPT
    r = subprocess.run([sys.executable, '-c', STEP, str(flower_data[1])], capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    act,_ = activation_bytes('resnet18', 'map', 8, 2, 256)
    grew = int(r.stdout.split()[-1])
    assert grew > act*8*KEPT['fp32'], (grew, act*8)

def test_memory_check_counts_every_cpu_process(monkeypatch):
    "Data-parallel processes on a CPU share its memory: a step that fits one process is refused for 4 on this machine"
    from fastcore.basics import AttrDict
    from flowers.memory import activation_bytes, check_memory, free_memory, KEPT
    act,n_params = activation_bytes('resnet18', 'map', 8, 0, 256)
    bs = int(.4*free_memory('cpu')/(act*KEPT['fp32'])) # about 40% of what is free now
    a = AttrDict(arch='resnet18', head='map', stride=8, context=0, size=256, stem=2, bs=bs)
    check_memory(a, 'fp32', 'cpu')
    monkeypatch.setenv('WORLD_SIZE', '4'); monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    with pytest.raises(FlowersError, match=re.escape(f'(4 processes on this machine, each --bs {bs})')): check_memory(a, 'fp32', 'cpu')

def test_failed_run_keeps_an_existing_folder(flower_data, tmp_path, capsys):
    "A run that fails in a folder the user already had removes nothing of theirs"
    out = tmp_path/'mine'; out.mkdir(); (out/'notes.txt').write_text('mine')
    csv = _csv(tmp_path, flower_data, is_valid='true')
    code,_,err = train_here(capsys, data=str(csv), img_dir=str(flower_data[0]/'images'), out=str(out), **HERE)
    assert code==2 and 'error: ' in err and (out/'notes.txt').read_text()=='mine'

def test_default_run_folders_are_never_shared(flower_data, tmp_path, capsys, monkeypatch):
    "Runs started in one second (a sweep's loop) each get their own default folder; a default folder a failed run made is removed again"
    from flowers.settings import new_run_folder
    got = [new_run_folder(tmp_path/'models') for _ in range(5)]
    assert len(set(got))==5 and all(p.is_dir() and not any(p.iterdir()) and p.name.startswith('run-') for p in got)
    csv = _csv(tmp_path, flower_data, is_valid='true') # no training rows: refused once the data is read, after the folder is made
    monkeypatch.chdir(tmp_path)
    code,_,err = train_here(capsys, data=str(csv), img_dir=str(flower_data[0]/'images'), **HERE)
    assert code==2 and 'error: ' in err and sorted((tmp_path/'models').iterdir())==got

def test_diverging_loss_stops_the_fit(flower_data):
    "A loss that stops being a number ends the fit with a clear error (train() then exports nothing)"
    import torch
    from flowers import FlowersError
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.fitting import TrainingGuard
    learn = count_learner(count_dls(flower_data[1], size=32, bs=8), pretrained=False, cbs=TrainingGuard(4e-3))
    with torch.no_grad(): learn.model[0][0].weight.fill_(float('nan')) # what a diverged fit leaves behind
    # the run's lr, not the schedule's at that step (a 25th of it at one cycle's start)
    with pytest.raises(FlowersError, match=r"training diverged: the loss became nan in epoch 1; nothing was exported. Try a lower --lr than this run's 0.004 \(e.g. 0.002\)"):
        with learn.no_bar(): learn.fit_one_cycle(1, 4e-3)

def test_metrics_json_is_strict_when_counts_are_all_equal(flower_data, tmp_path, capsys):
    "R² is undefined when every count is the same: metrics.json says null, not NaN, and the last line says why, not 'R² nan'"
    df = pd.read_csv(flower_data[1])[['image','count']].assign(count=3)
    df.to_csv(tmp_path/'counts.csv', index=False)
    train(tmp_path/'counts.csv', flower_data[0]/'images', out=tmp_path/'run', pretrained='no', size=32, epochs=1, bs=8) # the CLI's own call, without its imports
    m = _strict_json(tmp_path/'run'/'metrics.json')
    assert m['r2'] is None and math.isfinite(m['mae'])
    said = capsys.readouterr().out
    assert 'R² undefined (one count in every validation image)' in said and 'R² nan' not in said

def _counts_csv(tmp_path, flower_data, text, name='counts.csv'):
    (tmp_path/name).write_text(text)
    return tmp_path/name

def _problems(csv, flower_data):
    from flowers.data import read_counts, FlowersDataError
    with pytest.raises(FlowersDataError) as e: read_counts(csv, flower_data[0]/'images')
    return str(e.value), e.value.problems

@pytest.mark.parametrize('count', ['1e39', '1e30', '2e6'])
def test_absurd_counts_are_refused(flower_data, tmp_path, count):
    msg,probs = _problems(_counts_csv(tmp_path, flower_data, f'image,count\n00000.jpg,3\n00001.jpg,{count}\n'), flower_data)
    assert probs==[(3, f'count {count} is absurdly large (more than 1,000,000); check the column')]

def test_decimal_commas(flower_data, tmp_path):
    "';' files with decimal commas, as European spreadsheets write them, are read right; in ',' files the hint says why"
    from flowers.data import read_counts
    df = read_counts(_counts_csv(tmp_path, flower_data, 'image;count\n00000.jpg;7,5\n00001.jpg;3\n'), flower_data[0]/'images')
    assert df['count'].tolist()==[7.5, 3.0]
    msg,_ = _problems(_counts_csv(tmp_path, flower_data, 'image,count\n00000.jpg,"7,5"\n'), flower_data)
    assert "count '7,5' is not a number; it has a decimal comma" in msg

def test_rows_longer_than_the_header(flower_data, tmp_path):
    "A separator at each line's end made pandas read the names as an index and the counts as names; a longer later row stopped the file: blank cells past the header are nothing, others are their row's problem"
    from flowers.data import read_counts
    import numpy as np
    from flowers.predict import csv_images
    imgs = flower_data[0]/'images'
    for text in ('image,count\n00000.jpg,3,\n00001.jpg,4,\n', 'image,count,\n00000.jpg,3\n00001.jpg,4,,\n'):
        csv = _counts_csv(tmp_path, flower_data, text)
        assert read_counts(csv, imgs)[['image','count']].values.tolist()==[['00000.jpg', 3.], ['00001.jpg', 4.]]
    csv = _counts_csv(tmp_path, flower_data, 'image,count\n00000.jpg,3,blurry\n00001.jpg,4.5\n00002.jpg,7,5\n')
    msg,_ = _problems(csv, flower_data)
    assert "line 2: 1 more cell than the header's 2 columns ('blurry')" in msg and "line 4: 1 more cell than the header's 2 columns ('5'): a decimal comma (write 7.5)" in msg
    assert 'line 3' not in msg
    with pytest.warns(UserWarning, match=r'2 bad rows, dropped \(1 rows left\)'): assert read_counts(csv, imgs, drop_bad=True)['image'].tolist()==['00001.jpg']
    assert [p.name for p in csv_images(_counts_csv(tmp_path, flower_data, ' , \n00000.jpg,3\n', 'blanks.csv'))[0]]==['00000.jpg'] # a header of blanks: its first column, as pandas read it
    paths,counts = csv_images(csv) # counted by predict: every image, but only the row that is whole scored
    assert [p.name for p in paths]==['00000.jpg', '00001.jpg', '00002.jpg'] and counts.tolist()[1]==4.5 and np.isnan(counts[[0, 2]]).all()

def test_duplicated_column_is_an_error(flower_data, tmp_path):
    from flowers.data import read_counts, FlowersDataError
    with pytest.raises(FlowersDataError, match="the column 'count' appears more than once"):
        read_counts(_counts_csv(tmp_path, flower_data, 'image,count,count\n00000.jpg,3,4\n'), flower_data[0]/'images')

def test_copies_of_one_photo_are_named(flower_data, tmp_path, monkeypatch):
    "One photo saved under two names (with two counts) trained on both sides of the split unsaid: the pre-flight names the copies"
    import shutil, warnings
    from flowers.data import read_counts
    imgs = flower_data[0]/'images'
    (tmp_path/'images').mkdir()
    for f in ('00000.jpg', '00001.jpg', '00002.jpg'): shutil.copy(imgs/f, tmp_path/'images'/f)
    shutil.copy(imgs/'00000.jpg', tmp_path/'images'/'IMG_0000 copy.jpg') # as a file manager names a copy
    (tmp_path/'counts.csv').write_text('image,count\n00000.jpg,3\n00001.jpg,4\n00002.jpg,5\nIMG_0000 copy.jpg,6\n')
    import flowers.counts
    hashed,digest = [],flowers.counts._digest
    def _digest(p): hashed.append(p.name); return digest(p) # which photos are read a second time, to be compared byte for byte
    monkeypatch.setattr(flowers.counts, '_digest', _digest)
    with pytest.warns(UserWarning, match=r"1 image\(s\) are byte-for-byte copies of others \(e.g. 00000.jpg = IMG_0000 copy.jpg\), 1 of them with different counts"):
        assert len(read_counts(tmp_path/'counts.csv', verify=True))==4 # a warning, not a bad row: nothing is dropped
    sizes = pd.Series({f.name: f.stat().st_size for f in (tmp_path/'images').iterdir()})
    assert sorted(hashed)==sorted(sizes.index[sizes.duplicated(keep=False)]) # only files of one size can be copies: every photo was read twice
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*byte-for-byte')
        read_counts(flower_data[1], verify=True) # distinct photos: nothing said

def test_one_count_for_every_image_is_said(flower_data, tmp_path):
    "A --label-col naming a column of one value (a plot number, a 'heads' marker) trained a model that answers that number, unsaid"
    import warnings
    from flowers.data import read_counts
    df = pd.read_csv(flower_data[1])
    df.assign(plot=4).to_csv(tmp_path/'counts.csv', index=False)
    with pytest.warns(UserWarning, match=r"all 48 images have the count 4 \(column 'plot'\): a model learns nothing from them but that number; is --label-col"):
        assert len(read_counts(tmp_path/'counts.csv', flower_data[0]/'images', label_col='plot', verify=True))==48
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*learns nothing')
        read_counts(tmp_path/'counts.csv', flower_data[0]/'images', verify=True) # the counts: nothing said

def test_odd_image_names_are_row_problems(flower_data, tmp_path):
    big = 'x'*1_000_000
    text = f'image,count\n,3\n,4\nbad\0name.jpg,1\n{"a"*300}.jpg,2\n{big}.jpg,5\n00000.jpg,{big}\n'
    msg,probs = _problems(_counts_csv(tmp_path, flower_data, text), flower_data)
    by_line = dict(probs)
    assert by_line[2]==by_line[3]=='no image name (blank)' and len(probs)==6 # each blank once, never "listed again"
    assert 'contains a NUL byte' in by_line[4] and 'is too long for a file name' in by_line[5]
    assert 'is too long' in by_line[6] and "is not a number" in by_line[7]
    assert len(msg) < 2000 # a 1 MB cell is shortened, not repeated

def test_web_addresses_in_a_csv_are_named_as_such(flower_data, tmp_path):
    "An iNaturalist or gallery export lists image URLs: training and counting say so, rather than 'not found'"
    text = 'image,count\nhttps://example.org/plot7.jpg,3\n00000.jpg,1\n'
    msg,probs = _problems(_counts_csv(tmp_path, flower_data, text), flower_data)
    assert "'https://example.org/plot7.jpg' is a web address" in dict(probs)[2] and 'download the images' in dict(probs)[2]
    from flowers.predict import csv_images
    (tmp_path/'urls.csv').write_text('image\nhttps://example.org/plot7.jpg\nC:\\Users\\me\\IMG_1.jpg\n')
    assert list(map(str, csv_images(tmp_path/'urls.csv')[0]))==['https://example.org/plot7.jpg', 'C:\\Users\\me\\IMG_1.jpg'] # as written

def test_images_folder_may_be_a_link(flower_data, tmp_path):
    from flowers.data import read_counts
    (tmp_path/'images').symlink_to(flower_data[0]/'images')
    shutil.copy(flower_data[1], tmp_path/'counts.csv')
    assert len(read_counts(tmp_path/'counts.csv'))==48

@pytest.mark.parametrize('state,msg', [
    ('{not json', 'not a readable run state'),
    ('["a list"]', 'not a readable run state (wrong contents)'),
    ('{"args": {"epochs": "many"}, "lr": 0.001}', "--epochs 'many': must be a whole number"),
    ('{"args": {"data": 5}, "lr": 0.001}', 'not a readable run state (field args.data is 5)'), # tracebacks from deep inside the resumed run
    ('{"args": {}, "lr": "fast", "epochs_done": 2}', "not a readable run state (field lr is 'fast')"),
    ('{"args": {}, "lr": 0.001, "cut": {"epoch": 5, "pct": 0.5, "epochs": 3}}', 'not a readable run state (field cut is'), # a kept budget's epochs
    ('{"args": {}, "lr": 0.001, "epochs_done": true}', 'not a readable run state (field epochs_done is True)'), # JSON's true is Python's 1
    ('{"args": {}, "lr": 0.001, "cut": {"epoch": true, "pct": 0.5, "epochs": 3}}', 'not a readable run state (field cut is'),
])
def test_corrupt_resume_state_exits_2(tmp_path, state, msg):
    run = tmp_path/'run'; run.mkdir()
    (run/'state.json').write_text(state); (run/'checkpoint.pth').write_bytes(b'')
    r = run_cli('--resume', run)
    assert r.returncode==2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert run.is_dir() # the user's folder stays

def test_out_that_cannot_be_created(flower_data, tmp_path):
    "Root may write anywhere, so an unwritable --out is one under a file: the folder can't be created"
    (tmp_path/'taken').write_text('keep me')
    with pytest.raises(FlowersError, match="can't create the folder"): train(flower_data[1], out=tmp_path/'taken'/'run', size=32, epochs=1, pretrained='no')
    assert (tmp_path/'taken').read_text()=='keep me'
