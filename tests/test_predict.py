import io, json, os, pickle, shutil, signal, subprocess, sys, time, pytest, torch, numpy as np, pandas as pd
from pathlib import Path
from PIL import Image
from flowers.errors import FlowersError
from flowers.predict import load_counter, predict_table, map_name, NOT_COUNTED
from flowers.calibrate import Calibration, texture_stats
from conftest import main_here

@pytest.fixture(scope='module')
def counters(trained):
    "The session model loaded from its pickle and from its safe format"
    return load_counter(trained/'export.pkl'), load_counter(trained/'model.safetensors')

@pytest.fixture(scope='module')
def valid_images(trained, flower_data):
    return [flower_data[0]/'images'/f for f in pd.read_csv(trained/'predictions.csv')['image']]

def test_predict_inputs_agree(counters, flower_data):
    c = counters[0]
    f = flower_data[0]/'images'/'00005.jpg'
    img = Image.open(f)
    preds = [c.predict(f), c.predict(str(f)), c.predict(img), c.predict(np.asarray(img)), c.predict(f.read_bytes())]
    assert all(abs(p - preds[0]) < 1e-5 for p in preds) and isinstance(preds[0], float)

def test_pkl_matches_learn_predict(trained, flower_data):
    c = load_counter(trained/'export.pkl', precision='fp32') # learn.predict runs in fp32
    f = flower_data[0]/'images'/'00005.jpg'
    assert abs(c.predict(f) - float(c.learn.predict(f)[0][0])) < 1e-4

def test_a_loaded_model_given_new_dls_counts_as_it_did(trained, flower_data, valid_images):
    "fastai's way to check or fine-tune a loaded model on data: `learn.dls = ...`; `count_dls` once lacked the Normalize the learner had added"
    from fastai.learner import load_learner
    from flowers.data import count_dls
    learn = load_learner(trained/'export.pkl')
    before = learn.get_preds(dl=learn.dls.test_dl(valid_images))[0]
    learn.dls = count_dls(flower_data[1], size=json.loads((trained/'model.json').read_text())['size'], bs=8)
    assert torch.allclose(learn.get_preds(dl=learn.dls.test_dl(valid_images))[0], before, atol=1e-4)
    mae = json.loads((trained/'metrics.json').read_text())['mae'] # the same CSV and seed: the run's own validation images
    assert learn.validate()[1] == pytest.approx(mae, rel=.02)

def test_bf16_close_to_fp32(trained, valid_images):
    fp32,auto = (load_counter(trained, precision=p).predict_batch(valid_images) for p in ('fp32','auto'))
    assert np.abs(fp32 - auto).max() <= 0.05

def test_batch_equals_single(counters, flower_data):
    imgs = sorted((flower_data[0]/'images').glob('*.jpg'))
    batch = counters[0].predict_batch(imgs, bs=16)
    assert batch.shape==(len(imgs),) and np.allclose(batch, [counters[0].predict(i) for i in imgs], atol=1e-4)

def test_safe_matches_pkl(counters, valid_images):
    pkl,safe = (c.predict_batch(valid_images) for c in counters)
    assert np.abs(pkl - safe).max() < 1e-4
    assert safe.min() > 0 and counters[1].learn is None and counters[0].learn is not None

def test_safe_load_never_unpickles(trained, monkeypatch):
    def boom(*a, **k): raise AssertionError('pickle used')
    for mod,name in [(pickle,'load'),(pickle,'loads'),(torch,'load'),(pickle,'Unpickler')]: monkeypatch.setattr(mod, name, boom)
    c = load_counter(trained/'model.safetensors')
    assert c.meta['arch']=='resnet18' and c.meta['size']==32

def test_pkl_warns_about_pickle(trained, tmp_path):
    shutil.copy(trained/'export.pkl', tmp_path/'export.pkl')
    with pytest.warns(UserWarning, match='pickle, which can run code'): load_counter(tmp_path/'export.pkl')

def test_model_json_records(trained):
    import json
    m = json.loads((trained/'model.json').read_text())
    for k in ('arch','n_out','head','size','method','normalize','fn_col','label_col','versions','sha256'): assert k in m
    assert m['head']=='map' and 'y_range' not in m and m['method']=='squish'

@pytest.mark.parametrize('make,msg', [
    (lambda d: d/'none.pkl', 'model file not found'),
    (lambda d: (d/'x.pkl').write_text('hello') and d/'x.pkl', 'not a loadable model'),
])
def test_bad_model_files(tmp_path, make, msg):
    with pytest.raises(FlowersError, match=msg): load_counter(make(tmp_path))

def test_truncated_files(trained, tmp_path):
    b = (trained/'export.pkl').read_bytes()
    (tmp_path/'export.pkl').write_bytes(b[:len(b)//2])
    with pytest.raises(FlowersError, match='not a loadable model'): load_counter(tmp_path/'export.pkl')
    shutil.copy(trained/'model.json', tmp_path/'model.json')
    b = (trained/'model.safetensors').read_bytes()
    (tmp_path/'model.safetensors').write_bytes(b[:len(b)//2])
    with pytest.raises(FlowersError, match='sha256 does not match'): load_counter(tmp_path/'model.safetensors')

def test_missing_package_is_named(trained, tmp_path):
    "A pickle referring to a module that isn't installed names it (fastai alone says `UnboundLocalError: res`)"
    pkg = tmp_path/'pkg'; (pkg/'flowers_plugin_xyz').mkdir(parents=True)
    (pkg/'flowers_plugin_xyz'/'__init__.py').write_text('def get_y(r): return r["count"]\n')
    code = f"""
import sys; sys.path.insert(0, {str(pkg)!r})
import flowers_plugin_xyz
from fastai.vision.all import load_learner
learn = load_learner({str(trained/'export.pkl')!r})
learn.my_getter = flowers_plugin_xyz.get_y
learn.export({str(tmp_path/'plugin.pkl')!r})
"""
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)
    with pytest.raises(FlowersError, match="needs the Python package 'flowers_plugin_xyz'"): load_counter(tmp_path/'plugin.pkl')

def run_predict(*args):
    return subprocess.run([sys.executable, '-m', 'flowers.predict', *map(str, args)], capture_output=True, text=True, timeout=300)

def predict_here(capsys, *args, **kw):
    "`python -m flowers.predict` in this process (`main_here`)"
    from flowers.predict import main
    return main_here(capsys, main, *args, **kw)

def test_cli_folder_with_corrupt_jpeg(trained, flower_data, tmp_path):
    for f in sorted((flower_data[0]/'images').glob('*.jpg'))[:5]: shutil.copy(f, tmp_path/f.name)
    (tmp_path/'sub').mkdir(); shutil.copy(flower_data[0]/'images'/'00010.jpg', tmp_path/'sub'/'deep.jpg')
    b = (tmp_path/'00001.jpg').read_bytes(); (tmp_path/'00001.jpg').write_bytes(b[:len(b)//3])
    r = run_predict(trained, tmp_path, '--out', tmp_path/'preds.csv')
    assert r.returncode==1, r.stderr
    df = pd.read_csv(tmp_path/'preds.csv', keep_default_na=False)
    assert len(df)==6 and (df['error']!='').sum()==1
    bad = df[df['error']!='']
    assert bad['image'].iloc[0].endswith('00001.jpg') and '00001.jpg' in bad['error'].iloc[0]
    good = df[df['error']=='']
    c = load_counter(trained)
    assert np.allclose(good['count'].astype(float), [c.predict(p) for p in good['image']], atol=1e-4)

def test_cli_counts_jfif_and_names_the_pictures_it_leaves_out(trained, flower_data, tmp_path):
    "Browsers on Windows save JPEGs as .jfif: counted; a GIF beside them is left out, and said so, not passed over"
    src = flower_data[0]/'images'/'00000.jpg'
    shutil.copy(src, tmp_path/'plot1.jfif'); shutil.copy(src, tmp_path/'plot2.jpg')
    Image.open(src).save(tmp_path/'plot3.gif')
    r = run_predict(trained, tmp_path, '--out', tmp_path/'preds.csv')
    assert r.returncode==0, r.stderr
    df = pd.read_csv(tmp_path/'preds.csv', keep_default_na=False)
    assert sorted(Path(f).name for f in df['image'])==['plot1.jfif','plot2.jpg'] and (df['error']=='').all()
    assert df['count'].nunique()==1 # the same picture
    assert 'left out 1 picture(s)' in r.stderr and 'plot3.gif' in r.stderr

class _Interrupting(io.BytesIO):
    "A photo's bytes whose first read sends this process a real Ctrl-C (SIGINT), as a user's would arrive while a batch decodes"
    def read(self, *args):
        if not getattr(self, 'sent', False): self.sent = True; os.kill(os.getpid(), signal.SIGINT)
        return super().read(*args)

@pytest.fixture
def ctrl_c():
    "Python's own Ctrl-C handler, as a user's REPL has it: a pytest-xdist worker ignores SIGINT, and the test then counted every row"
    was = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, was)

def test_an_interrupted_table_keeps_the_rows_counted(counters, flower_data, ctrl_c):
    "Ctrl-C in the middle of `predict_table(partial=True)`: the rows counted are kept and the others say so; without `partial`, it stops as Ctrl-C does"
    c,files = counters[0],sorted((flower_data[0]/'images').glob('*.jpg'))[:12]
    whole = predict_table(c, files, bs=2, show_progress=False)
    items = files[:6] + [_Interrupting(files[6].read_bytes())] + files[7:]
    df = predict_table(c, items, bs=2, show_progress=False, partial=True, names=files)
    done,left = df['error']=='',df['error']==NOT_COUNTED
    assert done.sum() >= 4 and left.sum() >= 2 and (done | left).all() and df.attrs['interrupted']==left.sum()
    assert np.allclose(df.loc[done, 'count'], whole.loc[done, 'count']) and df.loc[left, 'count'].isna().all()
    assert whole.attrs['interrupted'] is None
    with pytest.raises(KeyboardInterrupt): predict_table(c, files[:2] + [_Interrupting(files[2].read_bytes())] + files[3:], bs=2, show_progress=False)

def test_cli_stopped_by_its_job_writes_what_it_counted(trained, flower_data, tmp_path):
    "SIGTERM (a job's time limit, `kill`) while the CLI counts by tiles, or draws maps: the table of the rows counted is written, exit 130, no traceback"
    for tile in (['--tile', '32'], []): # counted and drawn image by image; counted in batches first, then drawn
        out,maps = tmp_path/f'counts{len(tile)}.csv',tmp_path/f'maps{len(tile)}'
        p = subprocess.Popen([sys.executable, '-m', 'flowers.predict', str(trained), str(flower_data[0]/'images'), *tile, '--maps', str(maps),
                              '--out', str(out), '--bs', '4'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # one map picture per image, written before its count is kept: the 4th picture means the first 3 images were counted
        while p.poll() is None and len(list(maps.glob('*.png'))) < 4: time.sleep(.02)
        p.send_signal(signal.SIGTERM)
        _,err = p.communicate(timeout=120)
        assert p.returncode==130 and 'Traceback' not in err and 'Interrupted:' in err, err
        df = pd.read_csv(out, keep_default_na=False)
        done,left = df['error']=='',df['error']==NOT_COUNTED
        assert len(df)==48 and done.sum() >= 3 and (done | left).all() and f'{done.sum()} of 48 images counted' in err
        pngs,drawn = set(maps.glob('*.png')),{maps/map_name(j, f) for j,f in enumerate(df['image']) if done[j]}
        # by tiles, each image counted has its picture, and at most one more was drawn: the one being counted when the signal came
        if tile: assert left.sum() >= 1 and drawn <= pngs and len(pngs) <= done.sum()+1
        else: assert done.all() and pngs < drawn and 'not every count-map picture' in err

def test_a_csv_moved_while_counting_is_still_scored(trained, flower_data, tmp_path):
    "Its true counts were read again after the images were counted: a CSV moved (or edited) meanwhile lost its MAE, unsaid"
    df = pd.read_csv(flower_data[1])[:16]; df['image'] = [str(flower_data[0]/'images'/f) for f in df['image']]
    csv,maps = tmp_path/'mine.csv',tmp_path/'maps'
    df.to_csv(csv, index=False)
    p = subprocess.Popen([sys.executable, '-m', 'flowers.predict', str(trained), str(csv), '--maps', str(maps), '--out', str(tmp_path/'o.csv')],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while p.poll() is None and not list(maps.glob('*.png')): time.sleep(.02) # the pictures are drawn after the counting, one by one
    csv.rename(tmp_path/'moved.csv')
    said,err = p.communicate(timeout=120)
    assert p.returncode==0 and len(list(maps.glob('*.png')))==16, err
    assert 'On the 16 images with a true count: MAE ' in said, said + err

def test_cli_prints_table_from_csv(trained, flower_data):
    "A CSV with counts: each true count beside the predicted one, and how far they were"
    r = run_predict(trained/'export.pkl', flower_data[1])
    assert r.returncode==0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3]==['image','count','true'] and len(lines)==50
    assert lines[-1].startswith('On the 48 images with a true count: MAE ')

def test_cli_table_keeps_rows_short_beside_a_long_note(trained, flower_data, tmp_path):
    "A photo far larger than the training images gets a long note: printed last on its own row, it no longer pads every other row to its width"
    shutil.copy(flower_data[0]/'images'/'00000.jpg', tmp_path/'field.jpg')
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(tmp_path/'photo.jpg')
    (tmp_path/'broken.jpg').write_bytes((tmp_path/'field.jpg').read_bytes()[:200])
    shutil.copy(tmp_path/'field.jpg', tmp_path/'two\nlines.jpg') # a name's newline is shown, not printed: one row is one line
    r = run_predict(trained, tmp_path)
    assert r.returncode==1, r.stderr # one image could not be counted
    header,*lines = r.stdout.splitlines()
    rows = {Path(l.split()[0]).stem: l for l in lines}
    assert header.split()[:2]==['image','count'] and header.split()[-1]=='note' and sorted(rows)==['broken','field','photo','two\\nlines'], r.stdout
    assert "--tile auto" in rows['photo'] and len(rows['field']) < len(rows['photo']) - 100, r.stdout # not padded to the photo's note
    assert 'error: ' in rows['broken'] and 'broken.jpg: ' in rows['broken'] and rows['broken']==rows['broken'].rstrip()
    # the counts stay in one column: each ends where the header's 'count' does
    end = header.index('count') + len('count')
    assert rows['field'][:end].endswith(f" {load_counter(trained).predict(tmp_path/'field.jpg'):.2f}"), r.stdout

def test_cli_closed_pipe_ends_quietly(trained, flower_data):
    "`flowers.predict ... | head -1`: the reader gone before the table is printed ends the command with 141, as the shell's tools, not a traceback"
    p = subprocess.Popen([sys.executable, '-m', 'flowers.predict', str(trained), str(flower_data[0]/'images')], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close() # long before the model is loaded and the table printed
    err = p.stderr.read().decode(); p.wait(timeout=300)
    assert p.returncode==141 and 'Traceback' not in err and 'BrokenPipe' not in err, err

def test_a_table_predict_wrote_is_counted_again_but_not_scored(trained, flower_data, tmp_path, capsys):
    "Its `count` column is a model's: scored as true counts it said 'MAE 0.00'; a run's predictions.csv (true counts beside predicted ones) still scores, its images found"
    items = [flower_data[0]/'images'/'00000.jpg', flower_data[0]/'images'/'00001.jpg']
    predict_table(load_counter(trained), items, show_progress=False).to_csv(tmp_path/'first.csv', index=False) # as `--out` writes it
    r = run_predict(trained, tmp_path/'first.csv')
    assert r.returncode==0 and 'its counts are a model\'s, not true counts' in r.stderr and 'MAE' not in r.stdout, r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines())==3 # the header and both images, counted again
    # image,count,predicted,error: the validation images' true counts, named as in the training folder, which the run records
    code,out,err = predict_here(capsys, trained, trained/'predictions.csv')
    n = len(pd.read_csv(trained/'predictions.csv'))
    assert code==0 and f'On the {n} images with a true count' in out and 'not true counts' not in err, out + err

def test_cli_table_is_safe_for_spreadsheets_and_counted_again(trained, flower_data, tmp_path, capsys, monkeypatch):
    "A photo named =HYPERLINK(...) is text in the --out CSV, not a formula a spreadsheet would run; the table given back names the same photos"
    import csv
    names = ['=HYPERLINK("x",1).jpg', '+1.jpg', '-1.jpg', '@SUM(1).jpg', "'quoted.jpg", 'plain.jpg']
    for n in names: shutil.copy(flower_data[0]/'images'/'00000.jpg', tmp_path/n)
    def run(*args): return subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    r = run('--out', 'first.csv', '--', *names) # as a shell's *.jpg gives them: names as written, relative to the folder the user is in
    assert r.returncode==0, r.stderr
    with open(tmp_path/'first.csv', newline='') as f: rows = list(csv.DictReader(f))
    assert [r['image'] for r in rows]==["'"+n if n[0] in "=+-@'" else n for n in names]
    assert len({r['count'] for r in rows})==1 and all(float(r['count'])>0 for r in rows) # one photo under six names
    monkeypatch.chdir(tmp_path)
    code,_,err = predict_here(capsys, trained, 'first.csv', out='again.csv')
    assert code==0 and 'no such file' not in err, err
    with open(tmp_path/'again.csv', newline='') as f: again = list(csv.DictReader(f))
    assert [Path(r['image']).name for r in again]==names and all(r['error']=='' for r in again) # found, each under its full path

def test_a_runs_predictions_keep_odd_names(flower_data, tmp_path, capsys):
    "Trained on photos named like formulas: predictions.csv defuses them as --out does, and predict given it back finds and scores every one"
    import csv
    df = pd.read_csv(flower_data[1])
    df['image'] = [("=" if i%3==0 else "'" if i%3==1 else "")+f for i,f in enumerate(df['image'])]
    (tmp_path/'images').mkdir()
    for f,g in zip(pd.read_csv(flower_data[1])['image'], df['image']): shutil.copy(flower_data[0]/'images'/f, tmp_path/'images'/g)
    df.to_csv(tmp_path/'counts.csv', index=False)
    run = tmp_path/'run'
    from flowers.train import train
    train(tmp_path, out=run, size=32, bs=8, epochs=1, pretrained='no') # the CLI's function; predict below is the CLI
    assert f"Count photos with it: python -m flowers.predict {run} YOUR_PHOTOS/" in capsys.readouterr().out.splitlines()[-1] # what to run next
    with open(run/'predictions.csv', newline='') as f: cells = [row['image'] for row in csv.DictReader(f)]
    assert cells and set(cells) <= {"'"+n if n[0] in "='" else n for n in df['image']} # each a training name, defused
    r = run_predict(run, run/'predictions.csv') # the run's own images, found through metrics.json
    assert r.returncode==0 and f'On the {len(cells)} images with a true count' in r.stdout, r.stdout + r.stderr

def test_true_counts_of_a_spreadsheet_score_the_counts(trained, flower_data, tmp_path):
    "A European spreadsheet's CSV (semicolons, a decimal comma) with a blank count and a photo's web address: the MAE and the intervals are scored on the others"
    (tmp_path/'images').symlink_to(flower_data[0]/'images')
    (tmp_path/'mine.csv').write_text('image;count\n00000.jpg;3,5\n00001.jpg;\n00002.jpg;2\n00003.jpg;0\nhttps://example.org/plot7.jpg;4\n')
    r = run_predict(trained, tmp_path/'mine.csv', '--out', tmp_path/'o.csv', '--interval', '0.9')
    assert r.returncode==1 and '1 of 5 images could not be counted (see the error column)' in r.stderr, r.stderr # the table is written all the same
    df = pd.read_csv(tmp_path/'o.csv')
    assert df.columns[:3].tolist()==['image','count','true'] and np.allclose(df['true'], [3.5, np.nan, 2, 0, 4], equal_nan=True)
    assert df['error'].iloc[-1]=='https://example.org/plot7.jpg: a web address; flowers counts files, so download the image first'
    ok = df['true'].notna() & df['count'].notna()
    err = (df['count']-df['true'])[ok]
    held = int(df['true'][ok].between(df['low'][ok], df['high'][ok]).sum())
    assert f"On the 3 images with a true count: MAE {err.abs().mean():.2f}, bias {err.mean():+.2f}" in r.stdout
    assert r.stdout.strip().endswith(f"the intervals held {held} of 3 true counts")

def test_truth_line_splits_flagged_images():
    "Images flagged unusual are scored apart, among those with a true count only"
    from flowers.predict import add_truth
    df = pd.DataFrame(dict(image=list('abcde'), count=[1., 2., 4., 8., np.nan], unusual=[True, False, False, True, True], note='', error=''))
    line = add_truth(df.copy(), dict(a=2, b=2, c=3, e=1)) # d has no true count, e no count
    assert line=="On the 3 images with a true count: MAE 0.67, bias +0.00 (1 flagged unusual: MAE 1.00; the others 0.50)"
    assert add_truth(df.copy(), dict(a=2, d=7)).endswith("bias +0.00 (all flagged unusual)")
    assert add_truth(df.drop(columns='unusual'), dict(b=2, c=3))=="On the 2 images with a true count: MAE 0.50, bias +0.50"

def test_cli_usage_errors(trained, tmp_path):
    "One CLI run for the exit code; the other usage checks in-process (each CLI run costs seconds of imports)"
    r = run_predict(trained, tmp_path/'nothing.jpg')
    assert r.returncode==2 and 'no such file or folder' in r.stderr and 'Traceback' not in r.stderr
    from flowers.predict import find_images
    assert find_images([tmp_path])==([], []) # the CLI then says "no images found"
    with pytest.raises(FlowersError, match='model file not found'): load_counter(tmp_path/'nomodel')

def test_options_among_the_files():
    "The predict command line takes options anywhere: each keeps its value, the files keep their order, and `main`'s every flag is known to take none"
    import inspect
    from flowers.errors import options_first
    from flowers.predict import FLAGS, main
    args = ['run', '--tile', '-5', 'a.jpg', '--fp32', 'b.jpg', '--out=o.csv', '--', '--c.jpg']
    assert options_first(args, FLAGS)==['--tile', '-5', '--fp32', '--out=o.csv', 'run', 'a.jpg', 'b.jpg', '--', '--c.jpg']
    assert options_first(['run', 'a.jpg', '--out'])==['run', 'a.jpg', '--out'] # argparse then says --out wants a value
    assert set(FLAGS)=={f'--{k}' for k,p in inspect.signature(main).parameters.items() if p.annotation is bool}

@pytest.fixture(scope='module')
def camera_jpeg(flower_data, tmp_path_factory):
    "A field upscaled to a 2400x1800 camera-like JPEG"
    f = tmp_path_factory.mktemp('camera')/'photo.jpg'
    Image.open(flower_data[0]/'images'/'00003.jpg').convert('RGB').resize((2400, 1800), Image.BICUBIC).save(f, quality=90)
    return f

def test_large_jpeg_decoded_at_the_size_needed(trained, camera_jpeg):
    "libjpeg's draft mode and a box reduction bring it to no less than twice the model's input size, never below"
    from flowers.images import open_image
    size = json.loads((trained/'model.json').read_text())['size']
    img = open_image(camera_jpeg, size=size)
    assert 2*size <= min(img.size) < 4*size and img.size[0]*1800 == pytest.approx(img.size[1]*2400, rel=0.02)
    assert open_image(camera_jpeg).size==(2400, 1800) # without a size: every pixel

def test_training_and_prediction_paths_agree_on_large_photos(trained, camera_jpeg):
    "fastai's `learn.predict` (the exported DataBlock's decoding) and `Counter`, pickle and safe format, see the same pixels"
    pkl,safe = load_counter(trained/'export.pkl', precision='fp32'),load_counter(trained, precision='fp32')
    want = float(pkl.learn.predict(camera_jpeg)[0][0])
    assert pkl.predict(camera_jpeg)==pytest.approx(want, abs=1e-4) and safe.predict(camera_jpeg)==pytest.approx(want, abs=1e-4)
    # `learn.predict` moves the shared model to its data's device, so they must be the counter's (on a GPU it broke the counter's
    # next count); PyTorch's meta device stands in for CUDA here
    assert load_counter(trained/'export.pkl', device='meta').learn.dls.device==torch.device('meta')
    # and the normalisation's statistics are on the counter's device (fastai's `cuda=True` put them on the first GPU, whichever it counts on)
    from torchvision.models import resnet18
    from flowers.density import count_model
    from flowers.counter import Counter
    assert Counter(count_model(resnet18), 32, stats=([.5]*3, [.25]*3), device='meta').norm.mean.device==torch.device('meta')

def test_decoding_threads_keep_order_and_errors(counters, flower_data, tmp_path):
    "Batches decoded ahead in threads: the rows stay in order, a bad image in the middle stays on its row"
    imgs = sorted((flower_data[0]/'images').glob('*.jpg'))[:20]
    (tmp_path/'bad.jpg').write_bytes(b'not a jpeg')
    items = imgs[:7] + [tmp_path/'bad.jpg'] + imgs[7:]
    from flowers.predict import predict_table
    df = predict_table(counters[1], items, bs=4, show_progress=False)
    assert list(df['image'])==[str(i) for i in items] and (df['error']!='').sum()==1 and 'bad.jpg' in df['error'][7]
    assert np.allclose(df['count'].drop(index=7), [counters[1].predict(i) for i in imgs], atol=1e-4)
    plain = predict_table(counters[1], items, bs=4, show_progress=False, unusual=False) # counts only: no features computed
    assert 'unusual' in df and 'unusual' not in plain and plain['count'].equals(df['count']) and plain['error'].equals(df['error'])

# Intervals and unusual images (the must-show numbers are measured by benchmarks/calibration.py on a real run)
def test_calibration_recorded(trained):
    m,meta = json.loads((trained/'metrics.json').read_text()),json.loads((trained/'model.json').read_text())
    # at least the level on the set it was fitted to, by construction: the intervals are fitted to the counts metrics.json scores
    assert m['interval']['level']==0.9 and 0.9 <= m['interval']['coverage'] <= 1 and m['interval']['mean_width'] > 0
    assert len(meta['conformal']['scores'])==m['n_valid'] and meta['unusual']['max_count']==8 and meta['unusual']['threshold'] > 0

def test_calibration_in_bf16_is_fp32s(trained, flower_data):
    "A bf16 run's fingerprints are taken in bf16, as its `Counter` counts (2.5x faster): the same threshold within a few %, and the weights left in the layout export wants"
    from fastai.learner import load_learner
    from flowers.calibrate import calibrate
    from flowers.data import count_dls
    from flowers.report import valid_predictions
    learn = load_learner(trained/'export.pkl')
    learn.dls = count_dls(flower_data[1], size=32, bs=8, points=False) # the run's CSV and seed: its own split
    a,b = calibrate(learn, precision='fp32'),calibrate(learn, precision='bf16')
    assert b.threshold==pytest.approx(a.threshold, rel=.05) and np.abs(b.scores - a.scores).max() < .1*a.scores.max()
    assert all(np.allclose(m, n, rtol=.05, atol=.05*np.abs(m).max()) for m,n in zip(a.means, b.means))
    assert all(p.is_contiguous() for p in learn.model.parameters())
    # a run fits the intervals to the exported fp32 model's counts, whose coverage metrics.json reports: the same scores as fp32's
    c = calibrate(learn, precision='bf16', counts=valid_predictions(learn)['predicted'])
    assert np.allclose(c.scores, a.scores, atol=1e-4) and c.threshold==b.threshold

def test_interval_same_from_both_formats(counters, flower_data):
    f = flower_data[0]/'images'/'00005.jpg'
    (c1,lo1,hi1),(c2,lo2,hi2) = (c.predict_interval(f) for c in counters)
    assert 0 <= lo1 <= c1 <= hi1 and lo1==pytest.approx(lo2, abs=1e-3) and hi1==pytest.approx(hi2, abs=1e-3)
    assert counters[0].predict_interval(f, 0.5)[2] <= hi1 # a lower level is a narrower interval

def test_more_heads_than_trained_on_is_flagged(counters):
    "The fingerprint's own test of a count: above the largest training count is unusual, with a note saying so"
    cal = counters[1].calibration
    flags,notes = cal.unusual(np.concatenate(cal.means)[None], [cal.max_count + 1])
    assert flags[0] and 'more than the largest training count (8)' in notes[0]
    flags,notes = cal.unusual(np.concatenate(cal.means)[None], [1.])
    assert not flags[0] and notes[0]==''

def test_shapes_no_training_image_has_are_flagged(counters, trained, flower_data, tmp_path):
    "Squeezed to a square, a 2:1 field's heads are narrower than any learnt: on the default model its MAE doubled, unflagged"
    from flowers.predict import predict_table
    from flowers.synth import flower_field
    sizes = [Image.open(flower_data[0]/'images'/f).size for f in pd.read_csv(flower_data[1])['image']]
    train = set(pd.read_csv(trained/'predictions.csv')['image']) # the validation images; the rest trained
    ws = [w/h for (w,h),f in zip(sizes, pd.read_csv(flower_data[1])['image']) if f not in train]
    for c in counters: assert c.calibration.aspect==pytest.approx((min(ws), max(ws)))
    assert json.loads((trained/'model.json').read_text())['unusual']['aspect']==pytest.approx([min(ws), max(ws)])
    cal = counters[1].calibration
    ok = np.concatenate(cal.means)[None]
    hi = cal.aspect[1]
    for size,says in [((100, 100), ''), ((round(100*hi*1.2), 100), ''), ((round(100*hi*1.3), 100), ':1, a shape no training image has'),
                      ((100, round(100/cal.aspect[0]*1.3)), '1:')]:
        flags,notes = cal.unusual(ok, [1.], [size])
        assert flags[0]==bool(says) and (says in notes[0] if says else notes[0]==''), (size, notes)
    wide = flower_field(4, size=(384, 96), seed=3) # end to end: the table, `is_unusual`, and the CLI's note column
    for c in counters:
        row = predict_table(c, [wide], show_progress=False).iloc[0]
        assert row['unusual'] and '4.0:1, a shape no training image has' in row['note'] and c.is_unusual(wide)
    wide.save(tmp_path/'wide.png')
    r = run_predict(trained, tmp_path/'wide.png', '--out', tmp_path/'o.csv')
    assert r.returncode==0 and '4.0:1, a shape no training image has' in pd.read_csv(tmp_path/'o.csv')['note'][0]

def test_counts_by_tiles_are_judged_by_their_windows(counters, valid_images, trained, flower_data, tmp_path):
    "A total of windows may pass every training count, and a mosaic squeezed into one input looks like no training image: each window is judged"
    c = counters[1]
    cal = c.calibration
    _,fields = c._forward([c._tensor(f) for f in valid_images[:4]], feats=True)
    flagged,_ = cal.unusual(fields, np.zeros(4))
    ok = fields[~flagged] # windows like the training images
    assert len(ok)
    flag,note = cal.unusual_windows(ok, np.full(len(ok), cal.max_count)) # their total is far above the largest training count
    assert not flag and note==''
    flag,note = cal.unusual_windows(ok, [cal.max_count + 1] + [0]*(len(ok)-1))
    assert flag and note=='a window holds more heads for its area than the largest training count (8)'
    noise = [torch.randint(0, 256, (3, c.size, c.size), dtype=torch.uint8) for _ in range(3)] # noise in most windows
    _,far = c._forward(noise, feats=True)
    flag,note = cal.unusual_windows(np.concatenate([far, ok[:1]]), np.zeros(4))
    assert flag and note.startswith('most of its windows are unlike the training images')
    # through the CLI: rows by tiles say whether they are unusual from their windows, and carry no interval, with a warning that says why
    mosaic = Image.new('RGB', (128, 128))
    for i,f in enumerate(valid_images[:4]): mosaic.paste(Image.open(f).convert('RGB').resize((64, 64)), (64*(i%2), 64*(i//2)))
    mosaic.save(tmp_path/'mosaic.png')
    r = run_predict(trained, tmp_path/'mosaic.png', flower_data[0]/'images'/'00000.jpg', '--tile', '64', '--interval', '0.9', '--out', tmp_path/'o.csv')
    assert r.returncode==0 and '--interval with --tile' in r.stderr, r.stderr
    df = pd.read_csv(tmp_path/'o.csv', keep_default_na=False)
    assert list(df.columns)==['image','count','low','high','unusual','note','error'] and (df[['low','high']]=='').all().all()
    assert 'largest training count' not in df['note'][0] or 'a window' in df['note'][0] # never the total's own
    assert c.is_unusual(tmp_path/'mosaic.png', tile=64)==(str(df['unusual'][0])=='True') # the same judgement in Python

def test_unusual_images_far_larger_than_the_training_images_are_pointed_to_windows(counters, tmp_path):
    "A photo of a whole bed squeezed into one input shows heads far smaller than any learnt: its note says to count it by windows"
    from flowers.predict import predict_table
    c = counters[1]
    cal = c.calibration
    _,far = c._forward([torch.randint(0, 256, (3, c.size, c.size), dtype=torch.uint8)], feats=True) # noise: unlike them
    for scale,hint in ((3, True), (1.5, False)):
        w = round(scale*cal.side)
        flags,notes = cal.unusual(far, [1.], [(w, w)])
        assert flags[0] and notes[0].startswith('unlike the training images') and ("--tile auto, tile='auto', or the page's 'Count by windows'" in notes[0])==hint, notes
    flags,notes = cal.unusual(np.concatenate(cal.means)[None], [1.], [(w*4, w*4)]) # like them, only larger: no note
    assert not flags[0] and notes[0]==''
    # end to end, with the file's own size: a JPEG is decoded at a few times the model's input, not at its 8 x the training side
    n = round(8*cal.side)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (n, n, 3), dtype=np.uint8)).save(tmp_path/'bed.jpg', quality=90)
    row = predict_table(c, [tmp_path/'bed.jpg'], show_progress=False).iloc[0]
    assert row['unusual'] and f"({n}x{n} px, 8x the training images' side" in row['note'], row['note']
    assert c.is_unusual(tmp_path/'bed.jpg')

def test_tile_far_past_the_image_is_flagged(counters, flower_data, recwarn):
    "A 20 px photo with --tile 100000: one window of a few pixels, where the heads vanish (it counted 0, unflagged, with torch's std warning)"
    from flowers.predict import predict_table
    c = counters[1]
    img = Image.open(flower_data[0]/'images'/'00003.jpg').convert('RGB').resize((20, 12))
    assert c.is_unusual(img, tile=100000)
    row = predict_table(c, [img], tile=100000, show_progress=False).iloc[0]
    assert row['unusual'] and row['note'].startswith('its windows hold too few pixels to count (is --tile larger than the image?)')
    assert not [w for w in recwarn if 'degrees of freedom' in str(w.message)]

def test_table_and_cli_carry_intervals_and_flags(trained, flower_data, tmp_path):
    r = run_predict(trained, flower_data[1], '--interval', '0.9', '--out', tmp_path/'o.csv')
    assert r.returncode==0, r.stderr
    df = pd.read_csv(tmp_path/'o.csv', keep_default_na=False)
    assert list(df.columns)==['image','count','true','low','high','unusual','note','error'] # the CSV's counts beside
    assert (df['low'] <= df['count']).all() and (df['count'] <= df['high']).all() and (df['low'] >= 0).all()
    assert df['unusual'].isin([True, False]).all()
    with pytest.raises(FlowersError, match='between 0 and 1'): predict_table(load_counter(trained), [flower_data[0]/'images'/'00000.jpg'], level=1.5)

def test_is_unusual_same_from_both_formats(counters, valid_images):
    "The public call on the pickle and on the safe format: same flags, and a bool"
    flags = [[c.is_unusual(f) for f in valid_images[:4]] for c in counters]
    assert flags[0]==flags[1] and all(isinstance(f, bool) for f in flags[0])

def test_calibration_without_the_newest_block_still_flags(counters, valid_images):
    "A model calibrated before the newest fingerprint block (texture) reads the blocks it has, and ignores the rest"
    cal = counters[1].calibration
    old = Calibration(cal.scores, cal.means[:-1], cal.precisions[:-1], cal.threshold, cal.max_count, centre=cal.centre[:-1], scale=cal.scale[:-1])
    _,feats = counters[1]._forward([counters[1]._tensor(f) for f in valid_images[:4]], feats=True)
    assert feats.shape[1]==sum(map(len, cal.means)) and old.block_distances(feats).shape==(4, len(cal.means)-1)
    assert np.allclose(old.block_distances(feats), cal.block_distances(feats)[:, :-1])

def test_texture_tells_pixel_noise_from_fields(counters, valid_images):
    "Pixel-wise noise, shrunk to the model's size as a photo is, still has neighbours that disagree; fields do not"
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(4)]
    t = lambda imgs: texture_stats(torch.stack([counters[1]._tensor(i) for i in imgs]).float()/255)
    tn,tf = t(noise),t(valid_images[:8])
    assert tn[:, :2].min() > tf[:, :2].max() + .5 # 1 - autocorrelation, on a log scale
    assert tn[:, 2].abs().max() < .1 # the colours' fine detail is independent
