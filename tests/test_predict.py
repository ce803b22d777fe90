import pickle, shutil, subprocess, sys, pytest, torch, numpy as np, pandas as pd
from PIL import Image
from flowers.errors import FlowersError
from flowers.predict import load_counter

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
    assert c.meta['arch']=='resnet34' and c.meta['size']==32

def test_pkl_warns_about_pickle(trained, tmp_path):
    shutil.copy(trained/'export.pkl', tmp_path/'export.pkl')
    with pytest.warns(UserWarning, match='pickle, which can run code'): load_counter(tmp_path/'export.pkl')

def test_model_json_records(trained):
    import json
    m = json.loads((trained/'model.json').read_text())
    for k in ('arch','n_out','y_range','size','method','normalize','fn_col','label_col','versions','sha256'): assert k in m
    assert m['y_range'][0]==0 and m['method']=='squish'

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

def test_cli_prints_table_from_csv(trained, flower_data):
    r = run_predict(trained/'export.pkl', flower_data[1])
    assert r.returncode==0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:2]==['image','count'] and len(lines)==49

def test_cli_usage_errors(trained, tmp_path):
    r = run_predict(trained, tmp_path/'nothing.jpg')
    assert r.returncode==2 and 'no such file or folder' in r.stderr and 'Traceback' not in r.stderr
    r = run_predict(tmp_path/'nomodel', tmp_path)
    assert r.returncode==2 and 'no images found' in r.stderr
    (tmp_path/'a.jpg').write_bytes(b'')
    r = run_predict(tmp_path/'nomodel', tmp_path)
    assert r.returncode==2 and 'model file not found' in r.stderr and 'Traceback' not in r.stderr
