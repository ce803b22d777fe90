"Count maps and counting by windows, through the public calls and the CLI"
import io, json, shutil, subprocess, sys, pytest, torch, numpy as np, pandas as pd
from PIL import Image
from flowers.predict import load_counter
from flowers.train import train
from conftest import load_learner_count
from flowers.counter import WINDOW
from flowers.safe import _net_sha256
from flowers.density import map_stride, cell_strides, count_model, STEMS, MAP_CUTS, MAP_STRIDE, extent_targets, map_deviance, point_targets, pad_points
from flowers.stitch import FINE_STEP, fine_step, shifts, shifted, stitch, sharpen

@pytest.fixture(scope='module')
def counters(trained):
    return load_counter(trained/'export.pkl', precision='fp32'), load_counter(trained/'model.safetensors', precision='fp32')

def test_map_head_recorded(trained):
    assert json.loads((trained/'model.json').read_text())['head']=='map'

def test_count_map_sums_to_predict(counters, flower_data, tmp_path):
    f = flower_data[0]/'images'/'00003.jpg'
    img = Image.open(f)
    rot = tmp_path/'rot.jpg' # EXIF says "rotate 90°": the map is of the image as opened, upright
    exif = Image.Exif(); exif[0x0112] = 6
    img.save(rot, exif=exif)
    for c in counters:
        for src,(w,h) in ((f, img.size), (rot, img.size[::-1])):
            for fine in (True, False): # the shifted copies' map, and the network's own cells
                m = c.count_map(src, fine=fine)
                assert m.shape==(h, w) and m.dtype==np.float32 and m.min() >= 0
                assert abs(m.sum() - c.predict(src)) <= 0.01*max(1., c.predict(src))
    assert abs(counters[0].count_map(f).sum() - counters[1].count_map(f).sum()) < 1e-3
    small = counters[1].count_map(rot, max_side=32) # small enough to send to a page, in the photo's shape, with the same sum
    h,w = [max(1, round(v*32/max(img.size))) for v in img.size] # rotated: the photo's width is the map's height
    assert small.shape==(h, w) and abs(small.sum() - counters[1].predict(rot)) <= 0.01*max(1., small.sum())
    with open(f, 'rb') as stream: assert abs(counters[1].count_map(stream).sum() - counters[1].predict(f)) <= 0.01*max(1., small.sum())

def test_map_deviance_is_least_at_the_target():
    "The map's loss is 0 and flat where each cell holds its taught count, and grows with mass put on empty ground"
    t = point_targets(torch.tensor([[[-.3, .4], [.5, -.6]]]), 8, 8)
    d = t.clone().requires_grad_()
    loss = map_deviance(d, t).sum()
    loss.backward()
    assert float(loss.detach())==pytest.approx(0, abs=1e-6) and float(d.grad[t>0].abs().max()) < 1e-4
    more = [float(map_deviance(t + k*(t==0), t).sum()) for k in (.01, .05, .2)]
    assert 0 < more[0] < more[1] < more[2]

@pytest.mark.parametrize('stride,step', [(8, FINE_STEP), (16, FINE_STEP), (12, fine_step(12)), (16, fine_step(16))]) # the stem of 3's cells: an odd step
def test_fine_map_puts_a_head_where_it_is(stride, step):
    "What a model that learnt its training targets exactly answers for each shifted copy, stitched and sharpened: a peak on the head"
    S,head = 96,torch.tensor([21.3, 38.6]) # in input pixels, between the cells' centres
    xs = shifted(torch.zeros(3, S, S, dtype=torch.uint8), stride, step)
    n = S+stride
    assert len(xs)==(stride//step)**2 and all(x.shape==(3, n, n) for x in xs)
    maps = torch.cat([point_targets(((head + torch.tensor(d))*2/n - 1)[None,None], n//stride, n//stride)[:,0] for d in shifts(stride, step)])
    fine = stitch(maps, S, S, stride, step)
    at = torch.tensor([int(head[1])//step, int(head[0])//step])
    assert fine.shape==(S//step, S//step)
    def cell(m): return torch.tensor(divmod(int(m.argmax()), m.shape[1]))
    ys,xs = fine.nonzero(as_tuple=True) # each shifted copy counted the head in the cell holding it: a box around it
    assert (ys - at[0]).abs().max() <= stride//step//2 and (xs - at[1]).abs().max() <= stride//step//2
    sharp = sharpen(fine, stride, step)
    assert (cell(sharp) - at).abs().max() <= 1 and float(sharp.sum())==pytest.approx(float(fine.sum()), rel=1e-3)
    assert sharp.max()/sharp.sum() > 4*fine.max()/fine.sum() # the box that stitching built in is undone, mostly

def test_map_stride_is_measured_for_every_stem_and_cut():
    "The cells' spacing read off a network is what `model.json` records and `cell_strides` expects, for each stem and cut"
    from torchvision.models import resnet18
    for stem in STEMS:
        for px,cut in cell_strides(stem).items():
            assert map_stride(count_model(resnet18, 'map', cut, stem=stem))==px==cut*stem//2
    assert sorted(cell_strides(3))==[12, 24] and set(cell_strides(3).values())==set(MAP_CUTS)

def test_point_targets_count_each_head_in_its_cell():
    "A head's count goes to the map cell its centre lies in; padding points outside the image count nothing"
    pts = torch.tensor([[[-.99, -.99], [.3, .3], [.31, .26], [-10., -10.]], [[.99, -.5], [-10., -10.], [-10., -10.], [-10., -10.]]])
    t = point_targets(pts, 4, 8)
    assert t.shape==(2, 1, 4, 8) and t.sum((1,2,3)).tolist()==[3., 1.]
    assert t[0,0,0,0]==1 and t[0,0,2,5]==2 and t[1,0,1,7]==1

def test_points_are_padded_to_collate():
    "Every item's heads (and rims) padded to the batch's most, outside the image, as fastai's `TensorPoint` with its sizes; an empty field too"
    from fastai.vision.core import TensorPoint
    from fastai.data.load import fa_collate
    pt = lambda *xy: TensorPoint(torch.tensor(xy, dtype=torch.float).reshape(-1, 2), img_size=(100, 80), sz=(64, 64))
    items = [('img0', 3., pt(.1, .2, -.3, .4, .5, .6), pt(.2, .2, -.2, .4, .6, .6)), ('img1', 0., pt(), pt())]
    padded = pad_points(items)
    assert [o[:2] for o in padded]==[o[:2] for o in items]
    for o in padded:
        assert all(type(p) is TensorPoint and p.shape==(3, 2) and p.img_size==(100, 80) and p.sz==(64, 64) for p in o[2:])
    assert torch.equal(padded[0][2], items[0][2]) and (padded[1][2]==-10).all()
    assert fa_collate(padded)[2].shape==(2, 3, 2)

def test_extent_targets_mark_the_cells_on_a_head():
    "A cell lies on a head when its centre is within the head's radius; padding marks nothing"
    pts = torch.tensor([[[0., 0.], [-10., -10.]]])
    rims = torch.tensor([[[.5, 0.], [-10., -10.]]]) # radius 0.5: a quarter of the side
    on = extent_targets(pts, rims, 8, 8)[0, 0]
    assert on.shape==(8, 8) and on[3:5, 3:5].all() and not on[0].any() and not on[:, 0].any()
    assert on.sum()==12 # cell centres at ±0.125, ±0.375 within 0.5 of the middle: 4 + 8
    assert not extent_targets(pts[:, 1:], rims[:, 1:], 8, 8).any()

def test_predict_after_fit_and_points_again(flower_data):
    "fastai's own flow: `learn.predict` right after `fit` (the data held head positions), and a later fit is taught them again"
    from fastai.vision.all import Callback, first, risinstance
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.density import PointSupervision
    from flowers.predict import Counter
    class Taught(Callback):
        order = PointSupervision.order+1
        def before_fit(self): self.seen,self.extent = [],[]
        def before_batch(self):
            if self.training: self.seen.append(first(self.learn.cbs.filter(risinstance(PointSupervision))).pts is not None)
        def after_step(self): # the extent layer, taught from the radii, is the callback's own and learns
            ps = first(self.learn.cbs.filter(risinstance(PointSupervision)))
            self.extent.append(ps.extent.weight.detach().clone())
    learn = count_learner(count_dls(flower_data[1], size=32, bs=8, num_workers=0), pretrained=False)
    taught,img = Taught(),flower_data[0]/'images'/'00003.jpg'
    for _ in range(2):
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=taught)
        assert taught.seen and all(taught.seen)
        assert len(taught.extent) > 1 and not torch.equal(taught.extent[0], taught.extent[-1])
        ps = first(learn.cbs.filter(risinstance(PointSupervision)))
        assert ps.extent is not None and not any('extent' in k for k in learn.model.state_dict()) # the callback's, for the next fit, not the network's
        count = float(learn.predict(img)[0][0])
        assert count == pytest.approx(Counter.from_learner(learn, precision='fp32').predict(img), rel=1e-3, abs=1e-3)

def test_an_older_exports_callback_trains_on(flower_data):
    "`PointSupervision` pickled in an export.pkl of an earlier version lacks what was added since: trained further, it failed at its first step"
    import pickle
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.density import PointSupervision
    ps = PointSupervision()
    for k in ('saved', 'skipped', 'extent_weight'): ps.__dict__.pop(k, None) # as pickled before they were
    learn = count_learner(count_dls(flower_data[1], size=32, bs=8), 'resnet18', pretrained=False)
    learn.remove_cb(PointSupervision).add_cb(pickle.loads(pickle.dumps(ps)))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert learn.point_supervision.extent is None and learn.recorder.values[-1][0] > 0 # trained, with no extent taught, as it was made

def test_fastai_learners_and_the_export_train_on_data_with_points(flower_data, trained):
    "Head positions are for `PointSupervision` only: fastai's plain `vision_learner` trains on the same `dls`, and so does a loaded export, taught them again"
    from fastai.vision.all import Callback, first, risinstance, load_learner, vision_learner, resnet18, mae
    from flowers.data import count_dls
    from flowers.density import PointSupervision
    assert (flower_data[0]/'points.csv').is_file()
    dls = count_dls(flower_data[1], size=32, bs=8)
    learn = vision_learner(dls, resnet18, n_out=1, pretrained=False, metrics=mae)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert len(learn.recorder.values)==1 and np.isfinite(learn.recorder.values[0]).all()
    class Taught(Callback):
        order = PointSupervision.order+1
        def before_fit(self): self.seen = []
        def before_batch(self):
            if self.training: self.seen.append(first(self.learn.cbs.filter(risinstance(PointSupervision))).pts is not None)
    learn = load_learner(trained/'export.pkl')
    learn.dls,taught = count_dls(flower_data[1], size=32, bs=8),Taught()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-4, cbs=taught)
    assert taught.seen and all(taught.seen)
    assert np.isfinite(learn.validate()).all()

def test_tiles(counters, flower_data):
    "A mosaic larger than a window is counted in windows of `WINDOW` training images a side, each whole: one at the far edge is moved back inside, not cut short"
    ims = [Image.open(flower_data[0]/'images'/f'{i%8:05d}.jpg').convert('RGB').resize((64,64)) for i in range(16)]
    mosaic = Image.new('RGB', (256,256))
    for i,im in enumerate(ims): mosaic.paste(im, (64*(i%4), 64*(i//4)))
    c,sides = counters[1],[]
    hook = c.model[0][0].register_forward_pre_hook(lambda mod, x: sides.extend([tuple(x[0].shape[-2:])]*len(x[0]))) # a size per window, in batches or not
    try: n = c.predict(mosaic, tile=64)
    finally: hook.remove()
    side = int(WINDOW*c.size)//c.stride*c.stride
    assert len(sides) > 4 and set(sides)=={(side, side)} and side < 4*c.size # the mosaic is 4 training images a side
    sides.clear() # a strip whose height fits one window, though not its middle: one row of windows, each the strip's height
    hook = c.model[0][0].register_forward_pre_hook(lambda mod, x: sides.extend([tuple(x[0].shape[-2:])]*len(x[0])))
    strip = (side - c.stride)*64//c.size # pixels of the mosaic: a cell less than a window at tile=64
    try: c.predict(mosaic.crop((0, 0, 256, strip)), tile=64)
    finally: hook.remove()
    h,core = round(strip*c.size/64/c.stride)*c.stride,side - 2*c.stride # training images 4 cells wide: a margin of one cell
    assert core < h <= side and set(sides)=={(h, side)} and len(sides)==len(range(0, 4*c.size, core))
    m = c.count_map(mosaic, tile=64)
    assert m.shape==(256,256) and abs(m.sum() - n) <= 0.01*max(1., n)
    assert n >= 0 and np.isfinite(n)
    assert np.allclose(c.predict_batch([mosaic, ims[0]], tile=64), [n, c.predict(ims[0], tile=64)], atol=1e-4)
    from flowers import FlowersError
    from flowers.predict import predict_table
    for f in (c.predict, c.count_map, lambda im, tile: predict_table(c, [im], tile=tile, show_progress=False)):
        with pytest.raises(FlowersError, match='--tile 0: must be a whole number of at least'): f(mosaic, tile=0) # as the CLI: not silently untiled

def test_tile_past_the_image_shrinks_a_close_up(counters, flower_data):
    "`tile` twice the longer side: one window, the image at half the model's size, as README's close-ups advise; the map still sums to the count"
    img = Image.open(flower_data[0]/'images'/'00002.jpg').convert('RGB').resize((64,48))
    c,sides = counters[1],[]
    hook = c.model[0][0].register_forward_pre_hook(lambda mod, x: sides.extend([max(x[0].shape[-2:])]*len(x[0]))) # a side per window, in batches or not
    try: n = c.predict(img, tile=128)
    finally: hook.remove()
    assert sides==[max(c.stride, round(c.size/2/c.stride)*c.stride)] and n >= 0
    m = c.count_map(img, tile=128, fine=False)
    assert m.shape==(48,64) and abs(m.sum() - n) <= 0.01*max(1., n)

def test_tile_of_the_image_counts_it_whole(counters, flower_data):
    "An image that fits one window at the tile's scale is one input, counted as a training image is (4 windows overcounted empty ground)"
    img = Image.open(flower_data[0]/'images'/'00002.jpg').convert('RGB').resize((96,96))
    c,calls = counters[1],[]
    hook = c.model[0][0].register_forward_pre_hook(lambda mod, x: calls.append(tuple(x[0].shape)))
    try: n = c.predict(img, tile=96)
    finally: hook.remove()
    assert calls==[(1, 3, c.size, c.size)] and n==pytest.approx(c.predict(img), abs=1e-3)
    m = c.count_map(img, tile=96)
    assert m.shape==(96,96) and abs(m.sum() - n) <= 0.01*max(1., n)
    calls.clear() # larger than a training input at the tile's scale, but inside one window: still one input, the image whole
    hook = c.model[0][0].register_forward_pre_hook(lambda mod, x: calls.append(tuple(x[0].shape)))
    px = int(WINDOW*c.size)//c.stride*c.stride*64//c.size # a window's side at tile=64, in pixels of the image
    try: c.predict(img.resize((px, px)), tile=64)
    finally: hook.remove()
    side = round(px*c.size/64/c.stride)*c.stride
    assert calls==[(1, 3, side, side)] and side > c.size

def test_cli_maps_and_tile(trained, flower_data, tmp_path):
    imgs = [str(flower_data[0]/'images'/f'{i:05d}.jpg') for i in range(3)]
    imgs[2] = str(shutil.copy(imgs[2], tmp_path/'plot$1_$.jpg')) # not a formula for matplotlib to typeset in the picture's title
    imgs.append(str(shutil.copy(imgs[1], tmp_path/('🌼'*62 + '.jpg')))) # 252 bytes: its picture's name must stay within 255
    # options among the files, as people type them: argparse alone takes no file after an option here
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), '--maps', str(tmp_path/'maps'), '--tile', '64', imgs[0], '--fp32',
                        *imgs[1:], '--out', str(tmp_path/'c.csv')], capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    assert pd.read_csv(tmp_path/'c.csv')['image'].tolist()==imgs # every file, in the order given
    pngs = sorted((tmp_path/'maps').glob('*.png'))
    assert len(pngs)==4 and all(Image.open(p).size[0] > 50 for p in pngs)
    # the photos' folder, holding the maps now, counted again: its photos only, and the maps said to be left out
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), str(tmp_path), '--out', str(tmp_path/'again.csv')], capture_output=True, text=True, timeout=300)
    assert r.returncode==0 and f"left out 4 picture(s) in {tmp_path/'maps'}: count-map pictures" in r.stderr, r.stderr
    assert sorted(pd.read_csv(tmp_path/'again.csv')['image'])==sorted(imgs[2:])
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), imgs[0], '--tile', '0'], capture_output=True, text=True, timeout=300)
    assert r.returncode==2 and '--tile' in r.stderr and 'Traceback' not in r.stderr
    (tmp_path/'notes.txt').write_text('mine')
    for maps,says in ((tmp_path/'notes.txt', 'is a file'), (tmp_path/'notes.txt'/'maps', "can't create")): # checked before anything is counted
        r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), imgs[0], '--maps', str(maps)], capture_output=True, text=True, timeout=300)
        assert r.returncode==2 and f'--maps {maps}: {says}' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert (tmp_path/'notes.txt').read_text()=='mine'

def test_tile_auto_counts_at_the_training_scale(counters, trained, flower_data, tmp_path):
    "`tile='auto'` is the training images' median side, which the model records: `--tile 160` on 600 px training photos counted 12x the heads, unsaid"
    from flowers import FlowersError
    from flowers.predict import predict_table
    valid = set(pd.read_csv(trained/'predictions.csv')['image'])
    sides = [np.sqrt(np.prod(Image.open(flower_data[0]/'images'/f).size)) for f in pd.read_csv(flower_data[1])['image'] if f not in valid]
    assert json.loads((trained/'model.json').read_text())['unusual']['side']==pytest.approx(np.median(sides))
    ims = [Image.open(flower_data[0]/'images'/f'{i:05d}.jpg').convert('RGB') for i in range(9)]
    mosaic = Image.new('RGB', (3*max(im.width for im in ims), 3*max(im.height for im in ims)))
    for i,im in enumerate(ims): mosaic.paste(im, (mosaic.width//3*(i%3), mosaic.height//3*(i//3)))
    mosaic.save(tmp_path/'mosaic.png')
    px = round(np.median(sides))
    for c in counters: # the export and the safe format
        assert c.train_side==pytest.approx(np.median(sides)) and c.tile_px('auto')==px and c.tile_px(' AUTO ')==px and c.tile_px('96')==96
        n = c.predict(mosaic, tile=px)
        assert c.predict(mosaic, tile='auto')==pytest.approx(n, abs=1e-4) and abs(c.count_map(mosaic, tile='auto').sum() - n) <= .01*max(1., n)
        assert predict_table(c, [mosaic], tile='auto', show_progress=False)['count'][0]==pytest.approx(n, abs=1e-4)
    old = load_counter(trained/'export.pkl', precision='fp32') # a model trained before the side was recorded: says what to give instead
    old.calibration.side = None
    for f in (old.predict, old.count_map, lambda im, tile: predict_table(old, [im], tile=tile, show_progress=False)):
        with pytest.raises(FlowersError, match="--tile auto: this model does not record its training images' size.*give --tile PX"): f(mosaic, tile='auto')
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), str(tmp_path/'mosaic.png'), '--tile', 'auto', '--fp32', '--out', str(tmp_path/'a.csv')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode==0 and 'scale of the training images' not in r.stderr, r.stderr
    assert pd.read_csv(tmp_path/'a.csv')['count'][0]==pytest.approx(counters[0].predict(mosaic, tile='auto'), abs=1e-3)
    # a --tile far below the training images' size enlarges every head past what the model learnt: the CLI says so as it starts
    from flowers.predict import tile_note
    says = f"--tile {px//4} counts each image at {np.median(sides)/(px//4):.2g}x the scale of the training images, which were about {px} px a side (--tile auto)"
    assert tile_note(counters[0], px//4).startswith(says) and tile_note(counters[0], str(px//4)).startswith(says)
    assert tile_note(counters[0], 4*px).startswith(f"--tile {4*px} counts each image at 0.25x") and tile_note(counters[0], px+1)=='' and tile_note(counters[0], ' Auto')==''
    with pytest.raises(FlowersError, match="--tile 'many': must be a whole number of at least 8, or auto"): predict_table(counters[1], [mosaic], tile='many') # the CLI's --tile 0: test_cli_maps_and_tile

def test_a_sharp_peak_shows_in_the_picture():
    "A sharpened map holds a head in a pixel or two: its picture spreads it where an eye finds it, and leaves empty ground clear"
    from flowers.report import map_rgba
    m = np.zeros((200, 300), np.float32); m[100, 150] = 1.
    a = map_rgba(m)[..., 3]
    assert (a > .1).sum() >= 50 and a[100, 150]==a.max() and a[:, :100].max() < 1e-3

def test_map_pictures_of_large_photos_are_drawn_small_and_in_place(trained, counters, flower_data, tmp_path):
    "A photo larger than any picture is drawn, with its map, at most PICTURE_SIDE a side; a map of any size covers the whole photo"
    import matplotlib; matplotlib.use('Agg')
    from flowers.report import show_count_map, PICTURE_SIDE
    from flowers.images import open_image
    big = tmp_path/'big.jpg' # a camera photo's size, drawn on from a field
    Image.open(flower_data[0]/'images'/'00003.jpg').convert('RGB').resize((2400, 1800)).save(big)
    c,img = counters[1],open_image(big)
    for cmap in (c.count_map(big), c.count_map(big, max_side=256)):
        ax = show_count_map(img, cmap)
        photo,drawn = ax.images
        assert max(photo.get_array().shape[:2]) <= PICTURE_SIDE and max(drawn.get_array().shape[:2]) <= PICTURE_SIDE
        assert drawn.get_extent()==photo.get_extent()==[-.5, 2399.5, 1799.5, -.5] # the map over the whole photo, in its own pixels
        assert ax.get_title()==f'{cmap.sum():.1f}' # titled with the whole map's count, before it was shrunk to draw
    for src in (big, io.BytesIO(big.read_bytes())): # in one call from the counter, a stream too
        ax = c.show_count_map(src)
        assert abs(float(ax.get_title()) - c.predict(big)) <= .051 and all(max(i.get_array().shape[:2]) <= PICTURE_SIDE for i in ax.images)
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', str(trained), str(big), '--maps', str(tmp_path/'maps'), '--out', str(tmp_path/'c.csv')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    assert abs(pd.read_csv(tmp_path/'c.csv')['count'][0] - c.predict(big)) <= 0.01*max(1., c.predict(big))

@pytest.mark.parametrize('args', [dict(head='pool'), dict(stride=16, context=0, method='pad')])
def test_other_heads_train_and_load_in_both_formats(flower_data, tmp_path, args, capsys):
    "fastai's pooled head, and the coarser map and plain head of earlier defaults, padded (no test trained --method pad before): trained by `train`, loaded by plain load_learner (in a fresh process: the session's model, trained by the CLI)"
    out,img = tmp_path/'run',flower_data[0]/'images'/'00001.jpg'
    train(flower_data[0], out=out, size=32, bs=8, epochs=1, pretrained='no', **args) # the CLI's own function: a new Python costs 6 s of imports
    capsys.readouterr() # its lines, apart from the messages below
    meta,pool = json.loads((out/'model.json').read_text()),args.get('head')=='pool'
    assert meta['head']==('pool' if pool else 'map') and meta.get('stride')==(None if pool else 16) and meta.get('context')==(None if pool else 0)
    safe = load_counter(out/'model.safetensors', precision='fp32')
    assert abs(load_learner_count(out/'export.pkl', img) - safe.predict(img)) < 1e-3
    if pool:
        assert safe.stride is None
        from flowers.predict import main # the command's own function, in-process: two more starts of torch cost 12 s
        for kw in (dict(tile='64'), dict(maps=str(tmp_path/'maps'))): # no map to count by or show: one message, before any image
            with pytest.raises(SystemExit) as e: main(str(out), str(img), **kw)
            err = capsys.readouterr().err
            assert e.value.code==2 and "pooled head" in err and 'Traceback' not in err, err
    else:
        assert safe.stride==16 and abs(safe.count_map(img).sum() - safe.predict(img)) <= 0.01*max(1., safe.predict(img))
        # padded: a wide image's map is of the image, not of its square with black bars; `tile='auto'` is the training images' longer side
        valid = set(pd.read_csv(out/'predictions.csv')['image'])
        longer = [max(Image.open(flower_data[0]/'images'/f).size) for f in pd.read_csv(flower_data[1])['image'] if f not in valid]
        wide = Image.open(img).convert('RGB').resize((96, 48))
        assert meta['method']=='pad' and safe.train_side==pytest.approx(np.median(longer)) and safe.tile_px('auto')==round(np.median(longer))
        for fine in (True, False):
            m = safe.count_map(wide, fine=fine)
            assert m.shape==(48, 96) and m.min() >= 0 and abs(m.sum() - safe.predict(wide)) <= .01*max(1., safe.predict(wide))
        assert abs(safe.count_map(wide, tile='auto').sum() - safe.predict(wide, tile='auto')) <= .01*max(1., safe.predict(wide))
        del meta['stride'], meta['context'] # as saved before they were recorded, when every map had 16 and one plain layer
        meta['net_sha256'] = _net_sha256(out/'model.safetensors', meta)
        (out/'model.json').write_text(json.dumps(meta))
        assert load_counter(out/'model.safetensors', precision='fp32').predict(img)==safe.predict(img)

@pytest.mark.parametrize('stem,size', [(3, 72), (4, 64)])
def test_stems_train_and_load_in_both_formats(flower_data, tmp_path, stem, size, capsys):
    "The stems of the CPU's and the GPU's schedules (3 and 4 pixels a step, on larger images): trained by `train` (the CLI's function), recorded, and counted alike by both formats and plain load_learner"
    from flowers.density import body_stem
    out,img = tmp_path/'run',flower_data[0]/'images'/'00001.jpg'
    train(flower_data[0], out=out, size=size, stem=stem, bs=8, epochs=1, pretrained='no')
    assert f'{size}px, stem {stem},' in capsys.readouterr().out
    meta,m = (json.loads((out/f).read_text()) for f in ('model.json', 'metrics.json'))
    assert meta['stem']==m['stem']==stem and meta['stride']==MAP_STRIDE*stem//2 # cells farther apart in pixels: the same map as at stem 2 on a smaller image
    safe,pkl = load_counter(out/'model.safetensors', precision='fp32'),load_counter(out/'export.pkl', precision='fp32')
    assert body_stem(safe.model[0])==body_stem(pkl.model[0])==stem and safe.stride==pkl.stride==MAP_STRIDE*stem//2
    n = safe.predict(img)
    assert abs(load_learner_count(out/'export.pkl', img) - n) < 1e-3 and pkl.predict(img)==pytest.approx(n, abs=1e-4)
    assert abs(safe.count_map(img).sum() - n) <= .01*max(1., n) and abs(safe.count_map(img, tile='auto').sum() - safe.predict(img, tile='auto')) <= .01*max(1., n)
    assert safe.count_map(img).shape==Image.open(img).size[::-1]
