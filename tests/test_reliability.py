"Bad inputs never crash a run; an interrupted run loses nothing."
import io, json, re, shutil, signal, struct, subprocess, sys, time, zlib, pytest, numpy as np, pandas as pd
from pathlib import Path
from PIL import Image
from flowers.errors import FlowersDataError
from flowers.images import open_image
from flowers.data import read_counts
from flowers.predict import load_counter
from fastai.vision.all import Callback
from conftest import load_learner_count

def _png(w, h, bits, kind, raw=b''):
    "A PNG file of `w` x `h` pixels, `bits` a sample, colour type `kind`, from its unfiltered rows `raw`, made by hand: Pillow writes neither kind"
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t+d) & 0xffffffff)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, bits, kind, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')

def _png_header_only(w, h):
    "A tiny PNG file that claims to be `w` x `h` pixels"
    return _png(w, h, 1, 0)

def _save(img, fmt, **kw):
    b = io.BytesIO(); img.save(b, fmt, **kw); return b.getvalue()

def _png16(a, kind=2):
    "A PNG of 16 bits a channel from the HxWx3 (or HxWx4, `kind` 6) array `a`"
    h,w,_ = a.shape
    return _png(w, h, 16, kind, b''.join(b'\x00' + a[y].astype('>u2').tobytes() for y in range(h)))

def _tiff16(a):
    "An uncompressed RGB TIFF of 16 bits a channel from the HxWx3 array `a`"
    h,w,_ = a.shape
    data = a.astype('<u2').tobytes()
    tags = [(256,3,1,w),(257,3,1,h),(258,3,3,8),(259,3,1,1),(262,3,1,2),(273,4,1,16),(277,3,1,3),(278,3,1,h),(279,4,1,len(data)),(284,3,1,1)]
    ifd = struct.pack('<H', len(tags)) + b''.join(struct.pack('<HHI', t, k, n) + struct.pack('<HH' if k==3 else '<I', v, *([0] if k==3 else []))
                                                 for t,k,n,v in tags) + bytes(4)
    return b'II*\x00' + struct.pack('<I', 16+len(data)) + struct.pack('<HHH', 16, 16, 16) + bytes(2) + data + ifd

def _rgb12(): return np.broadcast_to(np.array([4095, 2048, 0], np.uint16), (12, 12, 3)) # a 12-bit colour camera's values

def _base(): return Image.open(Path(__file__).parents[1]/'data'/'sample'/'images'/'00000.jpg').convert('RGB')

def _gif():
    frames = [_base(), _base().rotate(90)]
    b = io.BytesIO(); frames[0].save(b, 'GIF', save_all=True, append_images=frames[1:]); return b.getvalue()

def _pages(fmt, shrink, **kw):
    "The base image and two more pictures, each `shrink` times smaller than the one before, in one file"
    b = _base()
    more = [b.rotate(90*i).resize((b.width//shrink**i, b.height//shrink**i)) for i in (1,2)]
    return _save(b, fmt, save_all=True, append_images=more, **kw)

def _exif_rotated():
    "The base image stored rotated, with EXIF orientation 6 saying how to turn it upright"
    img = _base().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif(); exif[0x0112] = 6
    return _save(img, 'PNG', exif=exif)

BAD = { # file name: (bytes, message)
    'truncated.jpg': (lambda: _save(_base(), 'JPEG')[:700], 'broken image file'),
    'empty.jpg': (lambda: b'', 'empty file (0 bytes)'),
    'text.jpg': (lambda: b'this is not a photo\n', 'not a supported image (use JPEG, PNG, WEBP, TIFF, BMP'),
    'drawing.svg': (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle r="9"/></svg>', 'not a supported image'),
    'animated.gif': (_gif, 'not a supported image'),
    'dot.png': (lambda: _save(Image.new('RGB', (1,1)), 'PNG'), 'image is only 1x1 pixels; too small to count anything in'),
    'bomb.png': (lambda: _png_header_only(30000, 30000), 'image is too large to open safely'),
    'notes.pdf': (lambda: b'%PDF-1.4\n1 0 obj<<>>endobj\n', 'not a supported image'),
    'stack.tiff': (lambda: _pages('TIFF', 1), 'holds 3 pictures of 125x112 pixels (a z-stack'), # a microscope's: the first alone would be counted
    'animated.webp': (lambda: _pages('WEBP', 1), 'holds 3 pictures'),
}
def _near_base(a): return a.shape==np.asarray(_base()).shape and np.abs(a.astype(int)-np.asarray(_base())).mean() < 4 # lossy

GOOD = { # file name: (bytes, check of the RGB array)
    '16bit.png': (lambda: _save(Image.fromarray(np.array([[0, 32768, 65535]*4]*12, np.uint16)), 'PNG'),
                  lambda a: a[0,:3,0].tolist()==[0,128,255] and (a[...,0]==a[...,2]).all()),
    # a scientific camera's 12 bits in a 16-bit file: scaled by 4095, not 65535 (nearly black, and counted as such)
    '12bit.tiff': (lambda: _save(Image.fromarray(np.array([[0, 2048, 4095]*4]*12, np.uint16)), 'TIFF'), lambda a: a[0,:3,0].tolist()==[0,128,255]),
    # 16 bits a channel of colour, of which Pillow keeps the high bytes (15 of 255 for 12 bits)
    '12bit_rgb.png': (lambda: _png16(_rgb12()), lambda a: a[0,0].tolist()==[255,128,0]),
    '12bit_rgb.tiff': (lambda: _tiff16(_rgb12()), lambda a: a[0,0].tolist()==[255,128,0]),
    '16bit_rgb.png': (lambda: _png16(_rgb12().astype(np.int64)*16), lambda a: a[0,0].tolist()==[255,128,0]),
    '12bit_rgba.png': (lambda: _png16(np.concatenate([_rgb12(), np.full((12,12,1), 0)], -1), 6), lambda a: (a==255).all()), # transparent
    'rgba.png': (lambda: _save(Image.new('RGBA', (16,16), (255,0,0,0)), 'PNG'), lambda a: (a==255).all()), # transparent -> white
    'half_alpha.png': (lambda: _save(Image.new('RGBA', (16,16), (0,0,0,128)), 'PNG'), lambda a: (abs(a.astype(int)-127)<=1).all()),
    'cmyk.jpg': (lambda: _save(Image.new('CMYK', (16,16), (0,255,255,0)), 'JPEG', quality=95), lambda a: a[...,0].mean()>200 and a[...,1].mean()<60),
    'gray.png': (lambda: _save(Image.new('L', (16,16), 77), 'PNG'), lambda a: (a==77).all()),
    'palette.png': (lambda: _save(_base().convert('P'), 'PNG'), lambda a: a.shape==np.asarray(_base()).shape),
    'photo.tiff': (lambda: _save(_base(), 'TIFF'), lambda a: a.shape==np.asarray(_base()).shape),
    'photo.bmp': (lambda: _save(_base(), 'BMP'), lambda a: a.shape==np.asarray(_base()).shape),
    'photo.webp': (lambda: _save(_base(), 'WEBP'), lambda a: a.shape==np.asarray(_base()).shape),
    'png_named.jpg': (lambda: _save(_base(), 'PNG'), lambda a: (a==np.asarray(_base())).all()), # contents decide, not the name
    'exif_rotated.png': (_exif_rotated, lambda a: (a==np.asarray(_base())).all()),
    'iphone.heic': (lambda: _save(_base(), 'HEIF', quality=95), _near_base), # an iPhone's photos, unless set to 'Most Compatible'
    'photo.avif': (lambda: _save(_base(), 'AVIF', quality=95), _near_base),
    'pyramid.tiff': (lambda: _pages('TIFF', 2), lambda a: (a==np.asarray(_base())).all()), # smaller copies of the first page
    'phone_mpo.jpg': (lambda: _pages('MPO', 1, quality=95), _near_base), # a phone's JPEG with more pictures beside the photo
}

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('corpus')
    for name,(make,_) in {**BAD, **GOOD}.items(): (d/name).write_bytes(make())
    return d

@pytest.mark.parametrize('name', BAD)
def test_bad_image_message(corpus, name):
    with pytest.raises(FlowersDataError) as e: open_image(corpus/name)
    assert str(e.value).startswith(f'{corpus/name}: ') and BAD[name][1] in str(e.value)

@pytest.mark.parametrize('name', GOOD)
def test_odd_but_good_image(corpus, name):
    img = open_image(corpus/name)
    assert img.mode=='RGB' and GOOD[name][1](np.asarray(img))

def test_bytes_and_arrays(corpus):
    assert np.asarray(open_image((corpus/'gray.png').read_bytes())).shape==(16,16,3)
    with pytest.raises(FlowersDataError, match='empty image data'): open_image(b'')
    assert np.asarray(open_image(np.full((10,10), 65535, np.uint16))).max()==255
    assert np.asarray(open_image(np.full((10,10), 1023, np.uint16))).max()==255 # 10 bits
    assert np.asarray(open_image(np.full((10,10), 70000, np.int32))).max()==round(70000*255/(2**18-1)) # over 16 bits: scaled by 18, not clipped

def test_web_addresses_and_home_folders_are_named_for_what_they_are():
    "A REPL user passes a photo's URL, or a path with '~': the message says why neither is a file here"
    with pytest.raises(FlowersDataError, match='a web address; .* download the image first'): open_image('https://example.org/plot7.jpg')
    with pytest.raises(FlowersDataError, match="'~' is not your home folder"): open_image('~/no-such-flowers-photo.jpg')
    with pytest.raises(FlowersDataError, match='image file not found$'): open_image('no-such-flowers-photo.jpg')

def test_preflight_lists_every_bad_image(corpus):
    rows = [f'{n},1' for n in list(BAD)+list(GOOD)]
    (corpus/'counts.csv').write_text('image,count\n' + '\n'.join(rows) + '\n')
    with pytest.raises(FlowersDataError) as e: read_counts(corpus/'counts.csv', verify=True)
    msg = str(e.value)
    assert f'{len(BAD)} bad rows' in msg
    for i,(name,(_,m)) in enumerate(BAD.items()): assert f'line {i+2}: {name}: {m}' in msg
    with pytest.warns(UserWarning, match='dropped'): df = read_counts(corpus/'counts.csv', verify=True, drop_bad=True)
    assert sorted(df['image'])==sorted(GOOD)

def test_train_cli_preflight_exits_2(corpus, tmp_path):
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--data', str(corpus), '--out', str(tmp_path/'run')], capture_output=True, text=True, timeout=300)
    assert r.returncode==2 and 'Traceback' not in r.stderr and 'truncated.jpg: broken image file' in r.stderr
    assert not (tmp_path/'run'/'export.pkl').exists()

def test_predict_counts_good_and_reports_bad(corpus, trained):
    c = load_counter(trained)
    with pytest.raises(FlowersDataError, match='text.jpg: not a supported image'): c.predict(corpus/'text.jpg')
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), str(corpus), '--out', str(corpus/'p.csv')], capture_output=True, text=True, timeout=300)
    assert r.returncode==1 and 'Traceback' not in r.stderr
    df = pd.read_csv(corpus/'p.csv', keep_default_na=False)
    bad = set(df.loc[df['error']!='', 'image'].map(lambda p: Path(p).name))
    assert bad=={n for n in BAD if n.endswith(('.jpg','.png','.tiff','.bmp','.webp'))} # the rest aren't picked up as images
    assert set(df.loc[df['error']=='', 'image'].map(lambda p: Path(p).name))==set(GOOD) # HEIC and AVIF too

def test_exif_rotated_predicts_like_upright(corpus, trained, tmp_path):
    c = load_counter(trained)
    (tmp_path/'upright.png').write_bytes(_save(_base(), 'PNG'))
    assert abs(c.predict(corpus/'exif_rotated.png') - c.predict(tmp_path/'upright.png')) < 1e-5

def test_a_12_bit_micrograph_counts_as_its_8_bit_copy(trained, tmp_path):
    "A microscope camera's 12-bit TIFF is counted as the same picture saved in 8 bits, not as a dark one"
    gray = np.asarray(_base().convert('L'))
    Image.fromarray(gray).save(tmp_path/'8bit.png')
    Image.fromarray(((gray.astype(int)*4095+127)//255).astype(np.uint16)).save(tmp_path/'12bit.tif')
    rgb = np.asarray(_base())
    Image.fromarray(rgb).save(tmp_path/'8bit_rgb.png')
    (tmp_path/'12bit_rgb.png').write_bytes(_png16((rgb.astype(int)*4095+127)//255)) # and in colour
    c = load_counter(trained)
    for deep,flat in (('12bit.tif','8bit.png'), ('12bit_rgb.png','8bit_rgb.png')):
        assert np.abs(np.asarray(open_image(tmp_path/deep)).astype(int) - np.asarray(open_image(tmp_path/flat))).max() <= 1
        assert c.predict(tmp_path/deep) == pytest.approx(c.predict(tmp_path/flat), abs=.02)

def _train_cmd(data, out, *extra):
    return [sys.executable, '-m', 'flowers.train', '--data', str(data), '--out', str(out), '--size', '32', '--bs', '8',
            '--pretrained', 'no', '--lr', '1e-3', *extra]

def _interrupted(cmd, out, wait=0.):
    "Run the training `cmd`, Ctrl-C it `wait` s after its first epoch is saved in `out`; its (stdout, stderr), having exited 130"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.time()
    while not (out/'history.csv').exists() and time.time()-t < 300 and p.poll() is None: time.sleep(0.05)
    time.sleep(wait)
    p.send_signal(signal.SIGINT)
    said,err = p.communicate(timeout=300)
    assert p.returncode==130, err
    return said,err

def test_sigint_saves_and_resume_finishes(flower_data, tmp_path):
    out = tmp_path/'run'
    _,err = _interrupted(_train_cmd(flower_data[0], out, '--epochs', '6'), out, wait=0.3) # into the next epoch
    assert 'saved the best model so far' in err and f'--resume {out}' in err and 'Traceback' not in err
    done = json.loads((out/'state.json').read_text())['epochs_done']
    assert 1 <= done < 6 and (out/'extent.pth').is_file() # the extent layer, which is the callback's, not the network's
    load_learner_count(out/'export.pkl', flower_data[0]/'images'/'00000.jpg', fresh=True) # written by the CLI's SIGINT handler
    assert load_counter(out/'model.safetensors').predict(flower_data[0]/'images'/'00000.jpg') > 0
    saved = {f.name: f.read_bytes() for f in out.iterdir()}
    again = subprocess.run(_train_cmd(flower_data[0], out, '--epochs', '6'), capture_output=True, text=True, timeout=300) # the same command again, without --resume
    assert again.returncode==2 and f'holds an interrupted run; continue it with --resume {out}' in again.stderr and 'Traceback' not in again.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()}==saved
    # the CSV edited before --resume (a row dropped): the split moves, and images it trained on would validate it
    edited = tmp_path/'edited'; edited.mkdir(); (edited/'images').symlink_to(flower_data[0]/'images')
    (edited/'counts.csv').write_text(''.join((flower_data[0]/'counts.csv').read_text().splitlines(keepends=True)[:-1]))
    st = json.loads(saved['state.json']); st['args']['data'] = str(edited) # as if its data folder had been edited in place
    (out/'state.json').write_text(json.dumps(st))
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--resume', str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode==2 and 'changed since the run was interrupted' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    (out/'state.json').write_bytes(saved['state.json'])
    assert {f.name: f.read_bytes() for f in out.iterdir()}==saved
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--resume', str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    assert f'resuming after epoch {done}' in r.stdout
    hist = pd.read_csv(out/'history.csv')
    assert hist['epoch'].tolist()==list(range(6))
    m = json.loads((out/'metrics.json').read_text())
    assert m['resumed'] and m['epochs']==6 and not (out/'checkpoint.pth').exists() and not (out/'extent.pth').exists()

class FirstLayer(Callback):
    "The extent layer of `PointSupervision` as a fit's first batch has it, before its first step"
    w = None
    def after_loss(self):
        x = self.learn.point_supervision.extent
        if self.w is None and x is not None: self.w = x.weight.detach().clone()

def _extent_learner(flower_data):
    "A small count-map `Learner` on the session's data, whose radii `PointSupervision` teaches an extent layer from"
    from flowers.data import count_dls
    from flowers.learner import count_learner
    return count_learner(count_dls(flower_data[1], size=32, bs=8, seed=42), 'resnet18', pretrained=False)

def test_a_resumed_run_goes_on_with_its_extent_layer(flower_data, tmp_path):
    "The extent layer belongs to `PointSupervision`, not the network: a resumed run made a new one, whose gradients from a random start went into the features"
    import torch
    from flowers.checkpoint import Checkpoint, load_checkpoint, EXTENT
    def learner(): return _extent_learner(flower_data)
    learn = learner()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=Checkpoint(tmp_path, {}))
    saved = torch.load(tmp_path/EXTENT, weights_only=True)
    for resume in (True, False):
        again,seen = learner(),FirstLayer()
        if resume: load_checkpoint(again, tmp_path)
        with again.no_bar(), again.no_logging(): again.fit(1, 1e-3, cbs=seen)
        assert torch.equal(seen.w, saved['layer']['weight'])==resume # a new run: a new layer

def test_one_extent_layer_teaches_every_fit_of_a_run(flower_data, tmp_path):
    "`fine_tune`'s unfrozen fit made a new extent layer, whose gradients from a random start went into the features the frozen fit's had taught"
    import torch
    from fastai.vision.all import load_learner
    learn = _extent_learner(flower_data)
    ps = learn.point_supervision
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=4, show_plot=False)
        assert ps.extent is None # lr_find's fit is undone, its layer too
        learn.fit(1, 1e-3)
        w,seen = ps.extent.weight.detach().clone(),FirstLayer()
        learn.fit(1, 1e-3, cbs=seen)
    assert torch.equal(seen.w, w) and not torch.equal(ps.extent.weight, w) # the second fit went on with the first fit's layer, and taught it
    learn.export(tmp_path/'export.pkl')
    assert ps.extent is not None and load_learner(tmp_path/'export.pkl').point_supervision.extent is None # and an export carries none

def test_interrupted_run_saves_its_default_schedule_and_resumes_its_cut(flower_data, tmp_path):
    """No --epochs: the CLI saves the epochs it fitted to the budget, so --resume finishes that schedule, whatever the machine does then,
    or the cut `KeepBudget` made of it (written here as `Checkpoint` saves one); and an older state resumes its head"""
    from flowers.settings import SCHEDULES
    out = tmp_path/'run'
    # bf16 (emulated where the CPU lacks it) is the schedule whose head has context: an older state must not get it. The minutes are
    # the default data's: its emulation fitted 3 epochs in 2 minutes on the fp32 EPYC, and a loaded CI machine 2 in 5. 30 leave room
    # for a cut on any machine, and cost nothing: the run stops after its first epoch, and the resumed one after the cut's
    said,_ = _interrupted(_train_cmd(flower_data[0], out, '--precision', 'bf16', '--context', '0', '--minutes', '30'), out)
    state,fitted = json.loads((out/'state.json').read_text()),int(re.search(r'(\d+) epochs fit 30 minutes', said)[1])
    assert state['args']['epochs']==fitted and state['args']['size']==32 and state['args']['precision']=='bf16'
    assert SCHEDULES['fast']['context'] > 0 and state['args']['norm']=='ibn' # the schedule's norm, resolved, is resumed as it was
    done = state['epochs_done']
    assert done + 1 < fitted
    state['cut'] = dict(epoch=done, pct=done/fitted, epochs=done + 1); state['args']['epochs'] = done + 1 # as `Checkpoint` saves a cut
    del state['args']['context'] # as saved before the head's dilated layers were: its checkpoint fits the plain head only
    (out/'state.json').write_text(json.dumps(state))
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--resume', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode==0, r.stderr
    assert r.stdout.count('epochs fit')==0 # the resumed run measured nothing: its epochs were saved
    m = json.loads((out/'metrics.json').read_text())
    assert m['context']==0 and m['epochs']==done + 1 and len(pd.read_csv(out/'history.csv'))==done + 1

def test_the_cli_says_when_the_epochs_are_capped(flower_data, tmp_path):
    "--minutes that would fit more than 3 times the schedule's epochs: the run ends sooner than asked, and its first line says why"
    out = tmp_path/'run'
    # 10 hours: past the cap on any machine that runs the tests, however loaded (the run stops after its first epoch)
    said,_ = _interrupted(_train_cmd(flower_data[0], out, '--minutes', '600'), out)
    n,ref = map(int, re.search(r"(\d+) epochs fit 600 minutes on this machine \(.*; the schedule's (\d+), and at most 3 times that", said).groups())
    assert n==3*ref and json.loads((out/'state.json').read_text())['args']['epochs']==n

def test_resume_needs_a_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--resume', str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode==2 and 'only a run that was interrupted can be resumed' in r.stderr

def test_kill_mid_export_keeps_previous_model(trained, flower_data, tmp_path):
    out = tmp_path/'run'
    shutil.copytree(trained, out)
    before = (out/'export.pkl').read_bytes()
    code = f"""
import time, torch, flowers.train as T
from pathlib import Path
save = torch.save
def slow_save(obj, f, *a, **k): # a disk so slow that the process is killed while writing the export
    if 'export' in Path(str(f)).name:
        with open(f, 'wb') as fh: fh.write(b'PK partial'); fh.flush()
        print('WRITING', flush=True); time.sleep(120)
    return save(obj, f, *a, **k)
torch.save = slow_save
T.train({str(flower_data[0])!r}, out={str(out)!r}, overwrite=True, size=32, bs=8, epochs=1, pretrained='no', lr=1e-3)
"""
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if 'WRITING' in line: break
    p.kill(); p.wait()
    assert (out/'export.pkl').read_bytes()==before # the session's model, byte for byte, which loads in a fresh process (test_train)
    assert list(out.glob('.export.tmp*'))
    train_again = subprocess.run(_train_cmd(flower_data[0], out, '--epochs', '1', '--overwrite'), capture_output=True, text=True, timeout=300)
    assert train_again.returncode==0 and not list(out.glob('.*.tmp*')) # the next run clears what the killed one left

def test_a_second_run_into_a_trained_models_folder_is_refused_unless_overwrite(flower_data, trained, tmp_path):
    "The README's command run twice, or a sweep reusing a name, replaced the first model minutes later, without a word"
    out = tmp_path/'run'
    shutil.copytree(trained, out)
    saved = {f.name: f.read_bytes() for f in out.iterdir()}
    r = subprocess.run(_train_cmd(flower_data[0], out, '--epochs', '1'), capture_output=True, text=True, timeout=300)
    assert r.returncode==2 and 'Traceback' not in r.stderr
    assert f'--out {out}: holds a trained model (export.pkl, model.safetensors); give another --out, or add --overwrite' in r.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()}==saved
    r = subprocess.run(_train_cmd(flower_data[0], out, '--epochs', '1', '--overwrite', '--seed', '3'), capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    assert json.loads((out/'metrics.json').read_text())['seed']==3 and (out/'export.pkl').read_bytes()!=saved['export.pkl']

def test_the_cli_trains_on_a_csv_of_full_paths(flower_data, tmp_path):
    "A glob's CSV of full paths, kept apart from the photos: trained through the command line as one of names is"
    df = pd.read_csv(flower_data[1])
    df['image'] = [str(flower_data[0]/'images'/f) for f in df['image']]
    (tmp_path/'mine').mkdir()
    df[['image','count']].to_csv(tmp_path/'mine'/'full.csv', index=False)
    r = subprocess.run(_train_cmd(tmp_path/'mine'/'full.csv', tmp_path/'run', '--epochs', '1'), capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    valid = set(pd.read_csv(tmp_path/'run'/'predictions.csv')['image'])
    assert valid and valid <= {Path(f).name for f in df['image']} # named relative to the folder they share, images/

def test_drop_bad_trains_on_the_rest_and_records_them(flower_data, tmp_path):
    data = tmp_path/'data'
    shutil.copytree(flower_data[0], data)
    (data/'images'/'00002.jpg').write_bytes(b'')
    out = tmp_path/'run'
    r = subprocess.run(_train_cmd(data, out, '--epochs', '1', '--drop-bad'), capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    m = json.loads((out/'metrics.json').read_text())
    assert m['dropped']==[dict(line=4, problem='00002.jpg: empty file (0 bytes)')] and m['n_train']+m['n_valid']==47
