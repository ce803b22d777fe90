"Careless and hostile inputs to prediction, model files and the server: one clear message, nothing computed lost"
import io, json, math, os, re, shutil, stat, struct, numpy as np, pandas as pd, pytest, torch
from PIL import Image
from flowers import FlowersError
from flowers.images import open_image
from flowers.predict import load_counter, predict_table, find_images, check_csv_out
from test_predict import run_predict

def _tiff_bad_strip_offsets():
    "A 16x16 TIFF whose StripOffsets tag claims to be a fraction: Pillow raises TypeError (IFDRational) decoding it"
    b = io.BytesIO(); Image.fromarray(np.zeros((16,16,3), np.uint8)).save(b, 'TIFF'); d = bytearray(b.getvalue())
    off = struct.unpack('<I', d[4:8])[0]
    for i in range(struct.unpack('<H', d[off:off+2])[0]):
        e = off+2+12*i
        if struct.unpack('<H', d[e:e+2])[0]==273: d[e+2:e+4] = struct.pack('<H', 5); d[e+8:e+12] = struct.pack('<I', 8)
    return bytes(d)

@pytest.fixture(scope='module')
def counter(trained): return load_counter(trained, precision='fp32')

def test_decoder_exception_is_a_data_error(tmp_path):
    (tmp_path/'bad.tif').write_bytes(_tiff_bad_strip_offsets())
    with pytest.raises(FlowersError, match=r'bad.tif: broken image file \(TypeError'): open_image(tmp_path/'bad.tif')

def test_decoder_exception_keeps_the_other_rows(trained, flower_data, tmp_path):
    "predict writes its CSV with the good images counted and the bad one named"
    shutil.copy(sorted((flower_data[0]/'images').glob('*.jpg'))[0], tmp_path/'good.jpg')
    (tmp_path/'bad.tif').write_bytes(_tiff_bad_strip_offsets())
    r = run_predict(trained, tmp_path, '--out', tmp_path/'out.csv')
    assert r.returncode==1 and 'Traceback' not in r.stderr
    df = pd.read_csv(tmp_path/'out.csv', keep_default_na=False).set_index('image')
    assert 'broken image file' in df.loc[str(tmp_path/'bad.tif'), 'error'] and df.loc[str(tmp_path/'good.jpg'), 'error']==''

@pytest.mark.parametrize('arr,msg', [
    (np.full((16,16,3), np.nan, np.float32), 'NaN or infinite'),
    (np.where(np.eye(16)[...,None]>0, np.inf, 0.5).repeat(3, 2), 'NaN or infinite'),
    (np.zeros((16,16,2), np.uint8), 'shape (16, 16, 2) is not an image'),
    (np.zeros((2,16,16,3), np.uint8), 'shape (2, 16, 16, 3) is not an image'),
    (np.zeros((16,16,3), complex), 'not numbers'),
])
def test_bad_arrays(counter, arr, msg):
    with pytest.raises(FlowersError, match=msg.replace('(','\\(').replace(')','\\)')): counter.predict(arr)

def test_float_tiff_with_nan_is_refused(tmp_path):
    a = np.random.default_rng(0).random((16,16)).astype(np.float32); a[3,3] = np.nan
    Image.fromarray(a, 'F').save(tmp_path/'nan.tif')
    with pytest.raises(FlowersError, match='nan.tif: .*NaN or infinite'): open_image(tmp_path/'nan.tif')

def test_bool_and_single_channel_arrays_count(counter):
    a = np.random.default_rng(0).random((48,48)) > 0.5
    grey = (a*255).astype(np.uint8)
    assert counter.predict(a)==pytest.approx(counter.predict(grey), abs=1e-4)
    assert counter.predict(grey[...,None])==pytest.approx(counter.predict(grey), abs=1e-4)

def test_tensors_and_memoryviews(counter, flower_data):
    f = sorted((flower_data[0]/'images').glob('*.jpg'))[0]
    want = counter.predict(f)
    assert counter.predict(memoryview(f.read_bytes()))==pytest.approx(want, abs=1e-4)
    hwc = np.array(Image.open(f).convert('RGB'))
    assert counter.predict(torch.from_numpy(hwc).permute(2,0,1))==pytest.approx(want, abs=1e-4) # fastai's CxHxW
    assert counter.predict(torch.from_numpy(hwc))==pytest.approx(want, abs=1e-4)

@pytest.mark.parametrize('x', [None, 3, [1,2,3], 2.5, {'a':1}])
def test_things_that_are_not_images(counter, x):
    with pytest.raises(FlowersError, match=f"can't read an image from {type(x).__name__}; give a path, bytes"): counter.predict(x)

@pytest.mark.parametrize('x', ['x.jpg', b'\xff\xd8', np.zeros((16,16,3), np.uint8)])
def test_predict_batch_wants_a_list(counter, x):
    with pytest.raises(FlowersError, match='predict_batch takes a list of images'): counter.predict_batch(x)

def test_arguments_of_the_python_api_that_fit_no_image(counter, flower_data):
    "Names or ids fewer than the images were an IndexError; a map's `max_side=0` drew it full size, and -1 as one pixel"
    f = flower_data[0]/'images'/'00000.jpg'
    with pytest.raises(FlowersError, match='2 items, but 1 names and 2 ids'): predict_table(counter, [f, f], names=['a'], show_progress=False)
    for side in (0, -1, 2.5):
        with pytest.raises(FlowersError, match=f'max_side {side}: must be a whole number of at least 1'): counter.count_map(f, max_side=side)

def test_folder_and_fifo_named_like_images(counter, trained, tmp_path):
    (tmp_path/'dir.jpg').mkdir()
    with pytest.raises(FlowersError, match='dir.jpg: not a regular file'): counter.predict(tmp_path/'dir.jpg')
    os.mkfifo(tmp_path/'pipe.jpg')
    with pytest.raises(FlowersError, match='pipe.jpg: not a regular file'): counter.predict(tmp_path/'pipe.jpg')
    items,_ = find_images([tmp_path/'pipe.jpg']) # the CLI's path: must not block reading the pipe
    assert 'not a regular file' in predict_table(counter, items, show_progress=False)['error'][0]

def test_hidden_files_in_folders_are_not_images(flower_data, tmp_path):
    "macOS leaves `._NAME.jpg` beside each photo copied to a USB drive, and apps keep thumbnails in hidden folders: fastai skips both"
    src = flower_data[0]/'images'/'00000.jpg'
    for p in ['a.jpg', 'sub/b.JPG', '.thumbnails/a.jpg', 'sub/.hidden/c.jpg']:
        (tmp_path/p).parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, tmp_path/p)
    (tmp_path/'._a.jpg').write_bytes(b'\x00\x05\x16\x07' + bytes(4000)) # an AppleDouble header, not a JPEG
    (tmp_path/'.DS_Store').write_bytes(bytes(100)); (tmp_path/'notes.txt').write_text('plot 7')
    items,missing = find_images([tmp_path])
    assert items==[tmp_path/'a.jpg', tmp_path/'sub'/'b.JPG'] and missing==[]
    assert find_images([tmp_path/'._a.jpg'])[0]==[tmp_path/'._a.jpg'] # named on its own, it is counted (and its row says it is no image)

def test_linked_folders_are_searched_once(flower_data, tmp_path):
    "A folder of photos linked in (photos/2024 -> a share) was passed over unsaid; a link to a folder above it must not loop, nor count a photo twice"
    src,share,photos = flower_data[0]/'images'/'00000.jpg',tmp_path/'share',tmp_path/'photos'
    for p in (share/'x.jpg', photos/'a.jpg'): p.parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, p)
    (photos/'2024').symlink_to(share); (photos/'again').symlink_to(share); (share/'up').symlink_to(photos)
    items,_ = find_images([photos])
    assert items==[photos/'2024'/'x.jpg', photos/'a.jpg']

# Model files
def _copy_model(trained, tmp_path, edit=None, rehash=True):
    "A copy of the session model with `model.json` edited; its hash made again to match, as one who edits the file on purpose would (else the edit is caught by it)"
    from flowers.safe import _net_sha256
    for f in ('model.safetensors','model.json'): shutil.copy(trained/f, tmp_path/f)
    m = json.loads((tmp_path/'model.json').read_text())
    if edit: edit(m)
    if rehash: m['net_sha256'] = _net_sha256(tmp_path/'model.safetensors', m)
    (tmp_path/'model.json').write_text(json.dumps(m))
    return tmp_path/'model.safetensors'

DROP = object()

def test_pickle_warning_points_to_a_safe_format_that_exists(trained, tmp_path):
    "A REPL's `learn.export()` has no model.safetensors beside it: the warning says how to write one"
    from flowers.predict import load_pkl
    shutil.copy(trained/'export.pkl', tmp_path/'mine.pkl')
    with pytest.warns(UserWarning, match=r'save_safe\(learn, folder, arch\)'): load_pkl(tmp_path/'mine.pkl')
    run = tmp_path/'run'; run.mkdir(); shutil.copy(trained/'export.pkl', run/'export.pkl'); _copy_model(trained, run)
    with pytest.warns(UserWarning, match=re.escape(f"the safe format ({run/'model.safetensors'}) loads without pickle")): load_pkl(run/'export.pkl')

def test_edited_model_json_is_caught_by_its_hash(trained, tmp_path):
    f = _copy_model(trained, tmp_path, lambda m: m.update(size=100000), rehash=False)
    with pytest.raises(FlowersError, match='were changed after export'): load_counter(f)

def test_edited_model_json_without_its_hash_is_refused(trained, tmp_path):
    "The stem edited and the hash removed: the weights still fit, and the model loaded and counted wrongly"
    f = _copy_model(trained, tmp_path, lambda m: (m.update(stem=3), m.pop('net_sha256')), rehash=False)
    with pytest.raises(FlowersError, match="net_sha256 was removed"): load_counter(f)

@pytest.mark.parametrize('key,value,msg', [
    ('size', 100000, "'size' is 100000"), ('size', 'big', "'size' is 'big'"),
    ('arch', 'vgg', "'arch' is 'vgg'"), ('n_out', 3, "'n_out' is 3"),
    ('y_range', [5, 1], "'y_range'"), ('y_range', [0, float('inf')], "'y_range'"), ('y_range', None, "'y_range'"),
    ('method', 'crop', "'method'"), ('normalize', {'mean':[0,0,0], 'std':[1,0,1]}, "'normalize'"),
    ('ps', 2, "'ps'"), ('head', 'crop', "'head' is 'crop'"), ('arch', DROP, "'arch' is 'missing'"), ('method', DROP, "'method' is 'missing'"),
    ('stride', {}, "'stride' is {}"), # was a TypeError: unhashable
    ('norm', 'gn', "'norm' is 'gn'; it must be one of ibn, bn"),
    ('stem', 5, "'stem' is 5; it must be one of 2, 3, 4"), ('stem', True, "'stem' is True"),
    ('stride', 32, "'stride' is 32; it must be one of 8, 16"), # a stem of 2 has no map with cells 32 pixels apart
])
def test_model_json_fields_are_validated(trained, tmp_path, key, value, msg):
    "Without the hash (older files, or one removed by hand) every field is still checked"
    extra = dict(head='pool') if key=='y_range' else {} # only fastai's pooled head has a y_range
    f = _copy_model(trained, tmp_path, (lambda m: m.pop(key)) if value is DROP else (lambda m: m.update({key:value, **extra})))
    with pytest.raises(FlowersError, match=msg.replace('[','\\[')): load_counter(f)

def test_weights_of_another_network_say_which(trained, tmp_path):
    "model.json of another kind of network beside these weights (an edit, without the hash): the message names the weights that don't pair up"
    other = 'bn' if json.loads((trained/'model.json').read_text()).get('norm')=='ibn' else 'ibn'
    f = _copy_model(trained, tmp_path, lambda m: m.update(norm=other))
    with pytest.raises(FlowersError, match=r"weights don't fit the network model.json describes \(\d+ missing, e.g. 0\.4\.0\.bn1\..*; \d+ not in the network, e.g. 0\.4\.0\.bn1\..*Use the pair"):
        load_counter(f)
    f = _copy_model(trained, tmp_path, lambda m: m.update(context=m['context']+1))
    with pytest.raises(FlowersError, match=r"\(\d+ missing, e.g. 1\.density\."): load_counter(f)

@pytest.mark.parametrize('part,key,value', [('unusual', 'aspect', []), ('unusual', 'centre', [1.]), ('unusual', 'scale', {'a': 1}),
                                            ('unusual', 'threshold', 'far'), ('conformal', 'scores', [[1.]]), ('conformal', 'level', 2)])
def test_calibration_fields_are_validated(trained, tmp_path, part, key, value):
    "Calibration fields no export writes were tracebacks at the first count (a ValueError from numpy): one message when the model loads"
    f = _copy_model(trained, tmp_path, lambda m: m[part].update({key: value}))
    with pytest.raises(FlowersError, match=f"calibration fields are incomplete or invalid .*{part}.{key}"): load_counter(f)

def test_model_files_are_readable_by_others(trained):
    "Written as `open` would: model.safetensors is not the 0600 of safetensors' temporary file"
    modes = {f: stat.S_IMODE((trained/f).stat().st_mode) for f in ('model.safetensors','model.json','export.pkl')}
    assert len(set(modes.values()))==1 and modes['model.safetensors'] & stat.S_IROTH, modes

# Predict CLI
def test_predict_bad_bs_exits_2(trained, flower_data):
    r = run_predict(trained, flower_data[1], '--bs', '-1')
    assert r.returncode==2 and '--bs -1: must be a whole number of at least 1' in r.stderr and 'Traceback' not in r.stderr

COUNT = """
import re, sys, torch
from torchvision.models import resnet18
def peak(): return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])*1024
from flowers.density import count_model
from flowers.counter import Counter
from flowers.memory import layer_bytes
c = Counter(count_model(resnet18), 80, precision=sys.argv[1], device='cpu') # the host's memory, on a GPU machine too
xs = [torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8) for _ in range(256)]
before = peak()
c._forward(xs, feats=True) # as `predict_table` counts a batch
print(peak() - before, layer_bytes(c.model, 80))
"""

def test_batch_memory_estimate_bounds_real_counting():
    "What `bs_in_memory` counts for a batch is at least what counting it takes, in each precision this CPU counts in: it never makes a batch smaller that would fit"
    import subprocess, sys
    from flowers.memory import PEAK
    from flowers.precision import auto_precision
    for precision in dict.fromkeys(['fp32', auto_precision(torch.device('cpu'))]):
        r = subprocess.run([sys.executable, '-c', COUNT, precision], capture_output=True, text=True, timeout=300)
        assert r.returncode==0, r.stderr
        grew,per = map(float, r.stdout.split()[-2:])
        assert 0 < grew <= per*PEAK*256, (precision, grew, per*256)

def test_a_batch_too_large_for_memory_is_made_smaller(counter, flower_data):
    "`--bs 1000000` would ask for over 1 TB at 80 px, and the kernel kills a process out of memory without a word: it counts what fits, and says so"
    from flowers.memory import bs_in_memory
    per = 1e6
    assert bs_in_memory(64, per, None)==64 and bs_in_memory(64, per, 1e12)==64
    with pytest.warns(UserWarning, match=r'--bs 1000: counting that many at once would need about .* counting 100 at a time'): assert bs_in_memory(1000, per, 100*per*2*.35)==100
    assert counter.bs_in_memory(64)==64
    with pytest.warns(UserWarning, match=r'--bs 1000000000000: .* GB is free; counting \d+ at a time'): assert 1 <= counter.bs_in_memory(10**12) < 10**12
    items = sorted((flower_data[0]/'images').glob('*.jpg'))[:6]
    assert np.allclose(predict_table(counter, items, bs=10**12)['count'], counter.predict_batch(items, bs=2), atol=1e-4) # a batch of all 6

def test_a_tile_that_enlarges_an_image_past_memory_is_refused(counter, flower_data, monkeypatch):
    "`--tile 16` read as '16 tiles' enlarged a 24 MP photo to 600 MP (7 GB, minutes a count); `--tile 8` asks for 16 GB: refused per image, saying what --tile is"
    from flowers.memory import check_scaled, SCALED_BYTES
    check_scaled((6000, 4000), (6000, 4000), 512, None) # free memory unknown: not refused
    check_scaled((6000, 4000), (938, 625), 512, 1e9)
    with pytest.warns(UserWarning, match=r'--tile 32: counting this 6000 x 4000 image by tiles enlarges it to 15000 x 10000 pixels, which takes a while; --tile is'):
        check_scaled((6000, 4000), (15000, 10000), 32, 20*2**30) # counted, in a few minutes
    with pytest.raises(FlowersError, match=r'--tile 8: counting this 6000 x 4000 image by tiles enlarges it to 60000 x 40000 pixels, which needs 15.6 GB, '
                                           r'and 20.0 GB is free. --tile is how many of the image.s pixels one model input shows, not a number of tiles'):
        check_scaled((6000, 4000), (60000, 40000), 8, 20*2**30)
    items = sorted((flower_data[0]/'images').glob('*.jpg'))[:3]
    counts = [counter.predict(f, tile=64) for f in items]
    w,h = Image.open(items[0]).size
    monkeypatch.setattr('flowers.memory.free_memory', lambda device: 2*SCALED_BYTES*w*h*counter.size**2/32**2) # what --tile 32 needs: 4x --tile 64's, 1/4 of --tile 16's
    assert counter.predict(items[0], tile=64)==pytest.approx(counts[0], abs=1e-4)
    for f in (counter.predict, counter.count_map, counter.is_unusual):
        with pytest.raises(FlowersError, match='--tile 16: counting this .* not a number of tiles'): f(items[0], tile=16)
    df = predict_table(counter, [items[0], items[1]], tile=16, show_progress=False)
    assert df['count'].isna().all() and df['error'].str.contains('not a number of tiles').all() # each row says why; nothing else is lost
    assert np.allclose(predict_table(counter, items, tile=64, show_progress=False)['count'], counts, atol=1e-4)

@pytest.mark.parametrize('bs', [0, -1])
def test_predict_batch_bad_bs(counter, flower_data, bs):
    with pytest.raises(FlowersError, match=f'--bs {bs}: must be a whole number'): counter.predict_batch([flower_data[0]/'images'/'00000.jpg'], bs=bs)

def test_predict_out_checked_before_counting(trained, flower_data, tmp_path):
    "A folder given as --out is refused before any image is counted (and a missing folder, in-process)"
    r = run_predict(trained, flower_data[1], '--out', tmp_path)
    assert r.returncode==2 and 'is a folder' in r.stderr and 'Traceback' not in r.stderr and 'Wrote' not in r.stdout
    with pytest.raises(FlowersError, match='does not exist; create it first'): check_csv_out(tmp_path/'missing'/'out.csv')
    with pytest.raises(FlowersError, match=r'written as CSV.*name it .*counts\.csv$'): check_csv_out(tmp_path/'counts.xlsx')
    assert check_csv_out(tmp_path/'counts.CSV')==tmp_path/'counts.CSV' and check_csv_out(tmp_path/'counts')==tmp_path/'counts'

def test_predict_out_that_is_a_pipe_or_a_link(trained, flower_data, tmp_path):
    "`--out /dev/null` (as root) replaced the device with a file: a pipe or device is written to, not replaced; a link to a file stays a link"
    import os, threading
    from flowers.atomic import atomic_text
    from flowers.predict import main
    pipe,got = tmp_path/'table.csv',[]
    os.mkfifo(pipe) # a device as /dev/null is, without touching this machine's
    reader = threading.Thread(target=lambda: got.append(pipe.read_text()), daemon=True); reader.start()
    main(str(trained), str(flower_data[0]/'images'/'00000.jpg'), out=str(pipe)) # the command's own function, in-process: no second start of torch
    reader.join(30)
    assert pipe.is_fifo() and got and got[0].startswith('image,count')
    real = tmp_path/'real.csv'; real.write_text('old'); (tmp_path/'link.csv').symlink_to(real)
    atomic_text(tmp_path/'link.csv', 'new')
    assert (tmp_path/'link.csv').is_symlink() and real.read_text()=='new' and not list(tmp_path.glob('.*tmp*'))

def test_predict_never_writes_over_its_inputs(trained, flower_data, tmp_path):
    "`--out` naming the CSV being counted (with the user's true counts) or one of the photos is refused, and the file is as it was"
    csv = tmp_path/'mine.csv'
    csv.write_text('image,count\n' + ''.join(f"{flower_data[0]/'images'/f'{i:05d}.jpg'},3\n" for i in range(3)))
    photo = tmp_path/'photo.jpg'
    shutil.copy(flower_data[0]/'images'/'00000.jpg', photo); shutil.copy(photo, tmp_path/'scan') # a scanner's file without an extension
    for inputs,out in (([csv], csv), ([photo], photo), ([tmp_path], photo), ([tmp_path/'scan'], tmp_path/'scan')):
        before = out.read_bytes()
        r = run_predict(trained, *inputs, '--out', out)
        # a photo is refused first for its extension (the table is CSV); either way nothing is written over it
        why = 'the table is written as CSV' if out.suffix=='.jpg' else 'is one of the inputs'
        assert r.returncode==2 and why in r.stderr and 'Traceback' not in r.stderr, r.stderr
        assert out.read_bytes()==before

# Server: limits applied while a request streams in, by bytes and by pixels
import asyncio
from flowers.serve import create_app, serve, MB

def _asgi_post(app, chunks, content_type, length=None):
    "POST `chunks` to /api/count of `app` in-process; the status, the JSON answer, and how many body bytes the app read"
    chunks,read,sent = iter(chunks),[0],[]
    async def receive():
        c = next(chunks, None)
        if c is None: return {'type':'http.request', 'body':b'', 'more_body':False}
        read[0] += len(c)
        return {'type':'http.request', 'body':c, 'more_body':True}
    async def send(msg): sent.append(msg)
    headers = [(b'content-type', content_type.encode())] + ([(b'content-length', str(length).encode())] if length else [])
    scope = dict(type='http', method='POST', path='/api/count', raw_path=b'/api/count', query_string=b'', headers=headers,
                 http_version='1.1', scheme='http', server=('test', 80), client=('test', 1), root_path='')
    asyncio.run(app(scope, receive, send))
    return sent[0]['status'], json.loads(b''.join(m.get('body', b'') for m in sent[1:])), read[0]

BOUNDARY = 'xyzzy'
def _part(name, data, filename=None, chunk=64*1024):
    "One multipart part, its data yielded in chunks as a slow client would send it"
    fn = f'; filename="{filename}"' if filename else ''
    yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode()
    for i in range(0, len(data), chunk): yield bytes(data[i:i+chunk])
    yield b'\r\n'

def _body(*parts):
    for p in parts: yield from p
    yield f'--{BOUNDARY}--\r\n'.encode()

CT = f'multipart/form-data; boundary={BOUNDARY}'

@pytest.fixture(scope='module')
def app(counter): return create_app(counter, max_upload_mb=1, max_request_mb=3, max_megapixels=2, max_request_megapixels=2.2)

def _png(w, h):
    b = io.BytesIO(); Image.new('RGB', (w, h), (90, 120, 60)).save(b, 'PNG'); return b.getvalue()

def test_big_file_is_stopped_as_it_streams(app):
    "A 300 MB upload: 413 after about the 1 MB limit is read, not after all of it"
    huge = memoryview(bytearray(300*MB))
    status,ans,read = _asgi_post(app, _body(_part('files', huge, 'huge.jpg')), CT)
    assert status==413 and 'at most 1 MB' in ans['error'] and read < 2*MB

def test_chunked_request_over_the_limit(app):
    "No Content-Length (chunked): five files under the per-file limit, over the 3 MB request limit"
    parts = [_part('files', os.urandom(int(0.9*MB)), f'{i}.jpg') for i in range(5)]
    status,ans,read = _asgi_post(app, _body(*parts), CT)
    assert status==413 and 'the limit is 3 MB' in ans['error'] and read < 3*MB + 128*1024

def test_oversized_field_is_413(app):
    status,ans,_ = _asgi_post(app, _body(_part('note', b'x'*(2*MB))), CT)
    assert status==413

def test_declared_length_over_the_limit_reads_nothing(app):
    status,ans,read = _asgi_post(app, _body(_part('files', b'x'*10, 'a.jpg')), CT, length=50*MB)
    assert status==413 and read==0

def test_not_multipart_is_400(app):
    status,ans,_ = _asgi_post(app, [b'{"files": []}'], 'application/json')
    assert status==400 and 'multipart form' in ans['error']

def test_pixel_budget(app, counter, flower_data):
    "A tiny PNG of many pixels is refused from its header; the request's good images are still counted"
    good = (flower_data[0]/'images'/'00000.jpg').read_bytes()
    big,mid = _png(2000, 1500), _png(1200, 1000) # 3 MP: over 2 per image; 1.2 MP twice: over 2.2 per request
    assert len(big) < 50_000
    status,rows,_ = _asgi_post(app, _body(_part('files', good, 'good.jpg'), _part('files', big, 'big.png'),
                                          _part('files', mid, 'm1.png'), _part('files', mid, 'm2.png')), CT)
    assert status==200 and [r['image'] for r in rows]==['good.jpg','big.png','m1.png','m2.png']
    assert rows[0]['count']==pytest.approx(counter.predict(good), abs=1e-4) # the app counts with this same counter
    assert 'big.png: 3 megapixels; the limit is 2 per image' in rows[1]['error']
    assert 'count' in rows[2] and "over this request's budget of 2.2 megapixels" in rows[3]['error']

def test_limits_of_inf_mean_no_limit(counter, flower_data):
    "`--max-upload-mb inf` answered every request with a bare 500 (an int of infinity): inf is no limit"
    app = create_app(counter, max_upload_mb=math.inf, max_request_mb=math.inf, max_megapixels=math.inf, max_request_megapixels=math.inf)
    good = (flower_data[0]/'images'/'00000.jpg').read_bytes()
    status,rows,_ = _asgi_post(app, _body(_part('files', good, 'good.jpg')), CT)
    assert status==200 and rows[0]['count']==pytest.approx(counter.predict(good), abs=1e-4)

@pytest.mark.parametrize('port', [70000, -1])
def test_port_out_of_range(trained, port):
    "Checked before the model loads, in-process (the CLI's `user_errors` turns it into exit 2 like every FlowersError)"
    with pytest.raises(FlowersError, match=f'--port {port}: must be a whole number from 0 to 65535'): serve(trained, port=port)

def test_port_in_use_or_unknown_host(trained):
    "One message before the model loads: uvicorn said it after loading, with exit 3"
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen()
        with pytest.raises(FlowersError, match=f"--port {s.getsockname()[1]}: can't listen there .*pick another --port"): serve(trained, port=s.getsockname()[1])
    with pytest.raises(FlowersError, match="--host 999.1.1.1 --port 8000: can't listen there .*check --host"): serve(trained, host='999.1.1.1')
