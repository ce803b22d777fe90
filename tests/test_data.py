import os, pickle, cloudpickle, shutil, warnings, pytest, torch, numpy as np, pandas as pd
from pathlib import Path
from fastai.vision.all import TensorImage, set_seed, first, risinstance
from flowers.data import *
from flowers import FlowersError
from flowers.augment import JITTER_AUG

@pytest.fixture
def ds(tmp_path, flower_data):
    "A writable copy of the session data set: (folder, function writing counts.csv from text)"
    src,_ = flower_data
    shutil.copytree(src/'images', tmp_path/'images')
    def write(text, name='counts.csv'):
        (tmp_path/name).write_text(text)
        return tmp_path/name
    return tmp_path, write

def _err(csv, **kw):
    with pytest.raises(FlowersDataError) as e: read_counts(csv, **kw)
    return str(e.value)

def test_good_csv(flower_data):
    path,csv = flower_data
    df = read_counts(csv)
    assert len(df)==48 and df['count'].dtype==np.float32
    assert df.attrs['img_dir']==(path/'images').resolve()

def test_data_folder(flower_data, tmp_path):
    "A folder is read as `train` reads it: its counts.csv"
    path,csv = flower_data
    pd.testing.assert_frame_equal(read_counts(path), read_counts(csv))
    assert count_dls(path, size=32, bs=8).train_ds.items.equals(count_dls(csv, size=32, bs=8).train_ds.items)
    with pytest.raises(FlowersError, match='no counts.csv'): read_counts(tmp_path)

def test_missing_file(tmp_path): assert 'file not found' in _err(tmp_path/'nope.csv')
def test_empty_file(ds): assert 'the file is empty' in _err(ds[1](''))
def test_header_only(ds): assert 'no rows' in _err(ds[1]('image,count\n'))

def test_wrong_columns(ds):
    msg = _err(ds[1]('Image,n\n00000.jpg,3\n'))
    assert "missing column 'image' and 'count'" in msg and "'image' looks like 'Image'" in msg and '--fn-col' in msg

def test_custom_columns(ds):
    df = read_counts(ds[1]('file,heads\n00000.jpg,3\n'), fn_col='file', label_col='heads')
    assert df['heads'].tolist()==[3.0]

@pytest.mark.parametrize('cell,expect', [('abc',"count 'abc' is not a number"), ('nan',"count 'nan' is NaN"),
    ('inf',"count 'inf' is infinite"), ('-2','count -2 is negative'), ('','no count')])
def test_bad_counts(ds, cell, expect):
    msg = _err(ds[1](f'image,count\n00000.jpg,1\n00001.jpg,{cell}\n'))
    assert f'line 3: {expect}' in msg and '1 bad row' in msg

def test_every_problem_listed(ds):
    msg = _err(ds[1]('image,count\n00000.jpg,x\n../secret.jpg,1\n/etc/passwd,2\nmissing.jpg,1\n00000.jpg,2\n'))
    for s in ("line 2: count 'x' is not a number", "line 3: image path '../secret.jpg' points outside the image folder",
              "line 4: image path '/etc/passwd' is absolute", "line 5: image file 'missing.jpg' not found",
              "line 6: image '00000.jpg' is listed again (first on line 2)", '5 bad rows', '--drop-bad'):
        assert s in msg

def test_full_paths_train_and_predict(ds, tmp_path):
    "A CSV of full paths (a glob's output), kept apart from the photos, reads and batches as one of names does; predict takes it too"
    from flowers.predict import find_images
    path,_ = ds
    sub = tmp_path/('sub-' + 'x'*80) # a long path, as real ones are: a message must name all of it
    sub.mkdir(); shutil.move(path/'images'/'00001.jpg', sub/'00001.jpg')
    full = [str(path/'images'/'00000.jpg'), str(sub/'00001.jpg'), str(path/'images'/'00002.jpg')]
    (tmp_path/'elsewhere').mkdir()
    csv = tmp_path/'elsewhere'/'counts.csv'
    pd.DataFrame(dict(image=full, count=[1, 2, 3])).to_csv(csv, index=False)
    df = read_counts(csv)
    assert df.attrs['img_dir']==tmp_path.resolve() and df['image'].tolist()==['images/00000.jpg', f'{sub.name}/00001.jpg', 'images/00002.jpg']
    assert "line 4: image 'images/00000.jpg' is listed again" in _err(ds[1]('image,count\n' + f'{full[0]},1\n' + f'{full[1]},1\n' + 'images/00000.jpg,1\n'), img_dir=tmp_path)
    pd.DataFrame(dict(image=[full[0], *full[1:2]*2, *full[2:]*3], x=5., y=5.)).to_csv(csv.with_name('points.csv'), index=False) # named as in its CSV
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert [len(o) for o in read_points(df)]==[1, 2, 3]
    dls = count_dls(csv, size=32, bs=2, valid_pct=.34, points=False)
    assert dls.one_batch()[0].shape==(2, 3, 32, 32)
    assert find_images([csv])==([Path(f) for f in full], [])
    msg = _err(ds[1]('image,count\n00000.jpg,1\n' + f'{sub/"00001.jpg"},2\n'))
    assert f"line 3: image path '{sub/'00001.jpg'}' is absolute, and not in the image folder {(path/'images').resolve()}" in msg

def test_duplicates_after_normalising(ds):
    assert "line 3: image './00001.jpg' is listed again" in _err(ds[1]('image,count\n00001.jpg,1\n./00001.jpg,1\n'))

def test_drop_bad_warns_and_drops(ds):
    with pytest.warns(UserWarning, match=r"line 3: count 'x' is not a number"):
        df = read_counts(ds[1]('image,count\n00000.jpg,1\n00001.jpg,x\n00002.jpg,4\n'), drop_bad=True)
    assert df['image'].tolist()==['00000.jpg','00002.jpg'] and df.attrs['dropped'][0]['line']==3

def test_drop_bad_all_rows_bad(ds):
    assert 'no usable rows left' in _err(ds[1]('image,count\nx.jpg,1\n'), drop_bad=True)

def test_semicolon_and_bom(ds):
    csv = ds[0]/'counts.csv'
    csv.write_bytes('\ufeffimage;count\n00000.jpg;2\n'.encode('utf-8'))
    assert read_counts(csv)['count'].tolist()==[2.0]

@pytest.mark.parametrize('encoding', ['utf-8', 'utf-16', 'utf-16-be'])
def test_tabs_and_utf16(ds, encoding):
    "Excel's 'Text (Tab delimited)' and 'Unicode Text' (tabs, UTF-16 with its byte-order mark; decimal commas in some countries)"
    csv = ds[0]/'counts.csv'
    text = 'image\tcount\n00000.jpg\t2\n00001.jpg\t7,5\n'
    csv.write_bytes((('\ufeff' if encoding!='utf-8' else '') + text).encode(encoding))
    assert read_counts(csv)['count'].tolist()==[2.0, 7.5]

def test_img_dir_beside_csv(ds):
    path,write = ds
    (path/'sub').mkdir(); shutil.copy(path/'images'/'00000.jpg', path/'sub'/'a.jpg')
    csv = write('image,count\nsub/a.jpg,1\n')
    assert read_counts(csv).attrs['img_dir']==path.resolve()
    assert read_counts(write('image,count\na.jpg,1\n'), img_dir=path/'sub')['image'].tolist()==['a.jpg']

# the default augmentation, and the optional zoom-out, colour, blur and noise (the previous default) on top of it
@pytest.mark.parametrize('aug', [True, JITTER_AUG])
def test_batch_shapes(flower_data, aug):
    from flowers.density import restore_points
    dls = count_dls(flower_data[1], size=32, bs=8, aug=aug)
    x,y = dls.one_batch() # (image, count), as any fastai learner takes them
    assert y.shape==(8,)
    x,y,pts,rims = restore_points(dls).one_batch() # as `PointSupervision` shows them: each head's centre and rim ride along, augmented with the image
    assert x.shape==(8,3,32,32) and x.dtype==torch.float32
    assert y.shape==(8,) and y.dtype==torch.float32
    assert ((pts.abs()<=1).all(-1).sum(1).float()==y).all() # every head inside the frame, the padding outside
    r = (rims-pts).norm(dim=-1)[pts.abs().le(1).all(-1)]
    assert rims.shape==pts.shape and (r > .02).all() and (r < .5).all() # the generator's radii, 2-15% of a field's side, as -1..1 lengths
    x,y = count_dls(flower_data[1], size=32, bs=8, points=False).one_batch()
    assert y.shape==(8,)

@pytest.mark.parametrize('points,says', [(None, None), ('image,x,y,r\n', "don't match their counts"), (b'\xff\xfe\x00junk', 'not readable'),
                                         ('image,u,v\n', 'needs the columns image, x and y'), ('word', "aren't numbers"),
                                         ('blank', "don't match their counts"), ('trailing', None)])
def test_points_that_cannot_be_used_are_said_and_left_out(flower_data, tmp_path, points, says):
    "A points.csv from another tool may be anything: the counts still train, and a warning says why the points don't"
    src = flower_data[0]
    shutil.copytree(src, tmp_path/'d')
    f = tmp_path/'d'/'points.csv'
    if points=='word': # a non-number where a coordinate should be was a traceback
        p = pd.read_csv(f).astype({'x': object}); p.loc[0,'x'] = 'left'; p.to_csv(f, index=False)
    elif points=='blank': # a row without a name was a traceback (pandas 3 kept it NaN)
        p = pd.read_csv(f); p.loc[0,'image'] = ''; p.to_csv(f, index=False)
    elif points=='trailing': f.write_text(f.read_text().replace('\n', ',\n')) # a separator at each line's end: the names became an index
    elif isinstance(points, bytes): f.write_bytes(points)
    elif points: f.write_text(points)
    df = read_counts(tmp_path/'d'/'counts.csv')
    if says is None: assert read_points(df) is not None; return
    with pytest.warns(UserWarning, match=says): assert read_points(df) is None

def test_radii_ride_along_as_rims(flower_data, tmp_path):
    "points.csv's radii become a point on each head's rim, scaled as the centre is; without radii there are centres only"
    from PIL import Image
    from flowers.density import restore_points
    df = read_counts(flower_data[1])
    pts,rims = read_heads(df)
    src = pd.read_csv(flower_data[0]/'points.csv')
    i = int(np.argmax(df['count']))
    w,h = Image.open(flower_data[0]/'images'/df['image'][i]).size
    mine = src[src.image==df['image'][i]]
    assert np.allclose((rims[i]-pts[i])[:,0], mine['r']*2/w, atol=1e-5) and (rims[i]-pts[i])[:,1].max()==0
    shutil.copytree(flower_data[0], tmp_path/'d')
    src.drop(columns='r').to_csv(tmp_path/'d'/'points.csv', index=False)
    pts2,rims2 = read_heads(read_counts(tmp_path/'d'/'counts.csv'))
    assert rims2 is None and np.allclose(pts2[i], pts[i])
    x,y,p = restore_points(count_dls(tmp_path/'d'/'counts.csv', size=32, bs=8)).one_batch()
    assert p.shape[-1]==2

def test_points_of_a_turned_photo_are_read_as_it_is_shown(flower_data, tmp_path):
    "A portrait phone photo is saved on its side with EXIF orientation 6; annotation tools, and `open_image`, show it upright"
    from PIL import Image
    from flowers.images import open_image
    src = flower_data[0]
    df = read_counts(src/'counts.csv')
    fn = next(f for f in df['image'] if len(set(Image.open(src/'images'/f).size))==2) # a field that is not square
    shutil.copytree(src/'images', tmp_path/'images')
    shown = Image.open(src/'images'/fn)
    exif = Image.Exif(); exif[0x0112] = 6
    shown.transpose(Image.Transpose.ROTATE_90).save(tmp_path/'images'/'turned.jpg', quality=95, exif=exif)
    assert open_image(tmp_path/'images'/'turned.jpg').size==shown.size
    pts = pd.read_csv(src/'points.csv')
    mine = pts[pts.image==fn]
    pd.concat([mine, mine.assign(image='turned.jpg')]).to_csv(tmp_path/'points.csv', index=False)
    c = df.loc[df.image==fn, 'count'].iloc[0]
    (tmp_path/'counts.csv').write_text(f'image,count\n{fn},{c}\nturned.jpg,{c}\n')
    xy = read_points(read_counts(tmp_path/'counts.csv'))
    assert len(xy[0])==c and np.abs(xy[0]).max()<=1 and np.allclose(xy[0], xy[1])

def test_names_from_windows_and_macs_are_the_files_they_name(flower_data, tmp_path):
    "A CSV made on Windows separates folders with `\\`; a Mac stores `é` as `e` + accent: both name files that are there"
    import unicodedata
    from flowers.predict import find_images
    src = flower_data[0]
    df = read_counts(src/'counts.csv').head(3)
    (tmp_path/'plot 1').mkdir()
    on_disk = [f'plot 1/{f}' for f in df.image[:2]] + [unicodedata.normalize('NFD', 'plot 1/café.jpg')]
    for f,d in zip(df.image, on_disk): shutil.copy(src/'images'/f, tmp_path/d)
    written = [on_disk[0].replace('/', '\\'), on_disk[1], unicodedata.normalize('NFC', on_disk[2])]
    assert not any((tmp_path/w).is_file() for w in written[::2])
    (tmp_path/'counts.csv').write_text('image,count\n' + ''.join(f'{w},{c:g}\n' for w,c in zip(written, df['count'])))
    pts = pd.read_csv(src/'points.csv')
    pts = pd.concat([pts[pts.image==f].assign(image=w) for f,w in zip(df.image, written)])
    pts.to_csv(tmp_path/'points.csv', index=False)
    got = read_counts(tmp_path/'counts.csv')
    assert got.image.tolist()==on_disk and got['count'].tolist()==df['count'].tolist()
    xy = read_points(got)
    assert xy is not None and [len(p) for p in xy]==df['count'].tolist()
    assert find_images([tmp_path/'counts.csv'])==([tmp_path/d for d in on_disk], [])

def test_near_misses_say_which_file_is_there(ds):
    path,write = ds
    (path/'images'/'Plot').mkdir()
    shutil.move(path/'images'/'00001.jpg', path/'images'/'IMG_2.JPG')
    shutil.move(path/'images'/'00002.jpg', path/'images'/'Plot'/'00002.jpg')
    msg = _err(write('image,count\nimg_2.jpg,3\nplot/00002.jpg,3\n00003,3\nnone.jpg,3\n'))
    assert "line 2: image file 'img_2.jpg' not found" in msg and "'IMG_2.JPG' is there: names are case-sensitive" in msg
    assert "line 3: image file 'plot/00002.jpg' not found" in msg and "'Plot' is there" in msg
    assert "'00003.jpg' is there: write the name with its extension" in msg
    assert "line 5: image file 'none.jpg' not found in" in msg and msg.count('is there')==3

def test_decoding_threads_leave_warnings_as_they_were(flower_data):
    "Images are checked and measured in threads: a header read's 'ignore' left behind silenced every later warning of a run"
    import warnings
    before = list(warnings.filters)
    for _ in range(3): read_points(read_counts(flower_data[1], verify=True))
    assert warnings.filters==before
    with pytest.warns(UserWarning, match='batch size 64 is more than'): count_dls(flower_data[1], size=32, bs=64)

def test_split_follows_seed(flower_data):
    split = lambda seed: sorted(count_dls(flower_data[1], size=32, seed=seed).valid.items.index)
    assert split(1)==split(1) and split(1)!=split(2) and len(split(1))==int(48*0.2)

def test_is_valid_column(ds):
    path,write = ds
    rows = [f'{i:05d}.jpg,{i%3},{"true" if i<4 else "false"}' for i in range(12)]
    dls = count_dls(write('image,count,is_valid\n' + '\n'.join(rows)), size=32, bs=4)
    assert sorted(dls.valid.items['image'])==[f'{i:05d}.jpg' for i in range(4)]

def test_getters_pickle(flower_data):
    dblock = count_block(flower_data[0]/'images', size=32)
    for f in dblock.getters:
        for mod in (pickle, cloudpickle): assert mod.loads(mod.dumps(f))(pd.Series({'image':'a.jpg','count':3.}))==f(pd.Series({'image':'a.jpg','count':3.}))
    dls = count_dls(flower_data[1], size=32)
    cloudpickle.loads(cloudpickle.dumps(dls.after_batch)) # what `learn.export` stores

def test_no_cropping_method(flower_data):
    with pytest.raises(FlowersDataError, match='crop'): count_block(flower_data[0], method='crop')

def test_rotation_keeps_whole_image():
    "A rotated white square stays whole: its area is kept, zoomed out by at most |cos|+|sin|"
    x = TensorImage(torch.ones(4,3,64,64))
    tfm = RotateFit(max_deg=30, p=1., draw=[30,-30,10,0])
    tfm.split_idx = None
    y = tfm(x, split_idx=0)
    assert torch.allclose(y[3], x[3], atol=1e-5) # no rotation: unchanged
    assert (y[:3,:,0,0]==0).all() and (y[:3,:,32,32]>0.99).all() # padded with zeros, centre intact
    # the rotated square's area (in pixels) equals the original area shrunk by the fit factor squared
    for i,deg in enumerate([30,-30,10]):
        r = np.radians(abs(deg)); f = np.cos(r)+np.sin(r)
        assert abs(y[i,0].sum().item()/64**2 - 1/f**2) < 0.03

def test_validation_batches_are_not_warped(flower_data):
    "The flips and rotations are left out of validation, not applied as an identity warp: a validation batch is its images, normalised, to the bit"
    from fastai.vision.all import Pipeline
    from flowers.augment import DihedralTrain
    dls = count_dls(flower_data[1], size=32, bs=8, points=False)
    x = dls.valid.one_batch()[0]
    plain = Pipeline([f for f in dls.valid.after_batch.fs if not isinstance(f, DihedralTrain)], split_idx=1)
    imgs = TensorImage(torch.stack([dls.valid.do_item(i)[0] for i in range(8)])) # unshuffled: the first 8
    assert torch.equal(x, plain((imgs,))[0])
    warp = first(dls.train.after_batch.fs.filter(risinstance(DihedralTrain)))
    b = TensorImage(torch.rand(8,3,32,32))
    set_seed(0); y = warp(b, split_idx=0)
    assert warp.do and not torch.equal(y, b) # in training, still flipped and rotated

def test_zoom_out_keeps_whole_image():
    "Zooming out shrinks the whole image into the frame, anywhere in it, and never cuts anything off"
    torch.manual_seed(0)
    x = TensorImage(torch.ones(16,3,64,64))
    tfm = RotateFit(max_deg=0, p=0., min_scale=0.5, p_scale=1.)
    y = tfm(x, split_idx=0)
    area = y[:,0].sum((1,2))/64**2
    assert (area > 0.5**2-0.03).all() and (area < 1.01).all() and area.std() > 0.02 # scales from 0.5 to 1, all of it kept
    cols = (y[:,0]>0.5).any(1).float().argmax(1) # left edge of the shrunk image
    assert len(set(cols.tolist())) > 3 # placed anywhere, not only in the middle

def test_squash_keeps_whole_image():
    "Squashing shrinks the width or the height (heads seen at an angle), never both, and never cuts anything off"
    torch.manual_seed(0)
    x = TensorImage(torch.ones(16,3,64,64))
    y = RotateFit(max_deg=0, p=0., min_aspect=0.5, p_aspect=1.)(x, split_idx=0)
    cols,rows = ((y[:,0]>0.5).any(d).sum(1) for d in (1,2)) # columns and rows the picture still covers
    assert ((cols==64) | (rows==64)).all() and (cols<60).any() and (rows<60).any()
    area = y[:,0].sum((1,2))/64**2
    assert (area > 0.5-0.03).all() and (area < 1.01).all() and area.std() > 0.02

def test_blur_and_noise_keep_range_and_mean():
    "Blur and noise change pixels, not what is in the picture: range 0..1, brightness kept"
    torch.manual_seed(0)
    x = TensorImage(torch.rand(8,3,32,32)*0.5 + 0.25)
    b = RandomBlur(max_sigma=1.5, p=1.)(x, split_idx=0)
    n = RandomNoise(max_std=0.1, p=1.)(x, split_idx=0)
    for y in (b,n):
        assert y.shape==x.shape and 0 <= y.min() and y.max() <= 1
        assert torch.allclose(y.mean((1,2,3)), x.mean((1,2,3)), atol=0.01) and not torch.allclose(y, x)
    assert b.std() < x.std() # blurring smooths
    assert torch.equal(RandomBlur(p=1.)(x, split_idx=1), x) # never at validation or prediction

def test_blur_and_noise_touch_a_share_p_of_the_images():
    "`p` is per image: with p=0.3 about 30% of a large batch change, the rest stay exactly as they were"
    torch.manual_seed(0)
    x = TensorImage(torch.rand(400,3,8,8)*0.5 + 0.25)
    for tfm,p in ((RandomBlur(p=.3), .3), (RandomNoise(p=.5), .5)):
        changed = (tfm(x, split_idx=0) != x).flatten(1).any(1).float().mean()
        assert abs(changed - p) < 0.08, (type(tfm).__name__, float(changed))

def test_show_batch_titles_counts(flower_data):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    dls = count_dls(flower_data[1], size=32, bs=4)
    dls.show_batch(max_n=4)
    titles = [ax.get_title() for ax in plt.gcf().axes if ax.get_title()]
    assert len(titles)==4 and all(float(t)==int(float(t)) for t in titles)
    plt.close('all')

def _epoch(dl, seed):
    set_seed(seed)
    return [(x.clone(), y.clone()) for x,y in dl]

def test_cache_gives_the_same_batches(flower_data):
    cached,plain = (count_dls(flower_data[1], size=32, bs=8, verify=False, cache=c, points=False) for c in (True,False))
    assert cached.train.cache=={} and plain.train.cache is None and plain.valid.cache is None
    for seed in (0,1): # the second epoch comes from the cache
        for (a,b),(c,d) in zip(_epoch(cached.train, seed), _epoch(plain.train, seed), strict=True):
            assert torch.equal(a,c) and torch.equal(b,d)
    assert len(cached.train.cache)==len(cached.train.dataset) and len(cached.valid.cache)==0 # valid is filled when it runs
    test = cached.test_dl(sorted((flower_data[0]/'images').glob('*.jpg'))[:4])
    assert test.cache is None and len(test.one_batch()[0])==4 # one pass: nothing to gain

def test_cache_decodes_once(ds, flower_data):
    "After the first epoch, the images can go: nothing is decoded again"
    path,_ = ds
    shutil.copytree(flower_data[0], path/'copy')
    dls = count_dls(path/'copy'/'counts.csv', size=32, bs=8, points=False)
    train,valid = _epoch(dls.train, 0),_epoch(dls.valid, 0)
    shutil.rmtree(path/'copy'/'images')
    assert len(_epoch(dls.train, 1))==len(train)
    assert all(torch.equal(a[0],b[0]) for a,b in zip(valid, _epoch(dls.valid, 1), strict=True)) # unshuffled, unaugmented
    with pytest.raises(FlowersDataError): _epoch(count_dls(path/'copy'/'counts.csv', size=32, bs=8, verify=False, cache=False).train, 0)
    kept = dict(dls.valid.cache)
    dls.valid.fill(); dls.train.fill() # what an epoch decoded is not decoded again (the images are gone)
    assert all(dls.valid.cache[k] is v for k,v in kept.items()) and len(dls.train.cache)==len(dls.train.dataset)

def test_cache_filled_before_workers(flower_data):
    dls = count_dls(flower_data[1], size=32, bs=8, num_workers=2)
    assert len(dls.train.cache)==len(dls.train.dataset) and len(dls.valid.cache)==len(dls.valid.dataset)

def test_cache_only_when_it_fits(monkeypatch):
    assert cache_fits(2000, 64) and not cache_fits(10**9, 224)
    # a fifth of the memory: one process may cache it, but not each of 4 data-parallel processes on this machine
    n = int(.2*os.sysconf('SC_PHYS_PAGES')*os.sysconf('SC_PAGE_SIZE')/(224*224*3))
    assert cache_fits(n, 224)
    monkeypatch.setenv('WORLD_SIZE', '4'); monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert not cache_fits(n, 224)
    monkeypatch.setenv('WORLD_SIZE', '8') # two machines of 4: the memory is shared by this machine's 4
    assert not cache_fits(n, 224) and cache_fits(n//4, 224)

def test_more_workers_than_cores_are_capped_with_a_warning(flower_data):
    "Each epoch starts every worker anew: --workers 500 on 2 cores took 39 s an epoch of 240 images"
    from fastai.vision.all import num_cpus
    with pytest.warns(UserWarning, match=f'this machine has {num_cpus()} cores'): dls = count_dls(flower_data[1], size=32, bs=4, num_workers=num_cpus()+3)
    assert dls.train.fake_l.num_workers==dls.valid.fake_l.num_workers==num_cpus()

@pytest.mark.parametrize('head', ['map', 'pool'])
def test_show_results_and_top_losses(flower_data, head):
    "fastai's own `learn.show_results()` and `plot_top_losses` (fastai's image method for them fails under plum)"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from fastai.vision.all import Interpretation
    from flowers.learner import count_learner
    dls = count_dls(flower_data[1], size=32, bs=4)
    learn = count_learner(dls, head=head, pretrained=False)
    learn.fit(1, 1e-4) # as a REPL user would, with the head positions of `count_dls` in the data
    learn.show_results(max_n=4, shuffle=False)
    b = dls.valid.new(shuffle=False).one_batch()
    preds = learn.get_preds(dl=[b])[0].flatten()
    titles = [ax.get_title() for ax in plt.gcf().axes if ax.get_title()]
    assert titles==[f'{float(t):.1f} / {float(p):.1f}' for t,p in zip(b[1][:4], preds[:4])]
    plt.close('all')
    interp = Interpretation.from_learner(learn)
    interp.plot_top_losses(3)
    losses,idx = interp.top_losses(3)
    valid = dls.valid_ds.items.iloc[idx.tolist()]
    titles = [ax.get_title() for ax in plt.gcf().axes if ax.get_title()]
    assert [float(t.split(' / ')[1]) for t in titles]==[float(c) for c in valid['count']]
    assert [float(t.split(' / ')[2]) for t in titles]==pytest.approx([round(float(l), 2) for l in losses], abs=.006)
    plt.close('all')
