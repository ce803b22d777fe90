import json, os, subprocess, sys, numpy as np, pandas as pd, pytest
from pathlib import Path
from PIL import Image
from flowers import FlowersError
from flowers.synth import flower_field, render_field, make_flowers, HEADS, BACKGROUNDS, LAYOUTS, SYNTH_VERSION
from flowers.data import default_data

def _files(path): return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}

def test_cli_is_deterministic(tmp_path):
    "The CLI once; the same settings again in-process give the same bytes"
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/'a'), '--n', '12', '--seed', '3'], capture_output=True, text=True)
    assert r.returncode==0, r.stderr
    make_flowers(tmp_path/'b', n=12, seed=3, show_progress=False)
    a,b = _files(tmp_path/'a'),_files(tmp_path/'b')
    assert len(a)==15 and a==b # 12 images, counts.csv, points.csv, synth.json
    df = pd.read_csv(tmp_path/'a'/'counts.csv')
    assert list(df.columns)==['image','count','background','heads','layout'] and all((tmp_path/'a'/'images'/f).is_file() for f in df.image)
    assert json.loads((tmp_path/'a'/'synth.json').read_text())['version']==SYNTH_VERSION

def test_processes_write_the_same_files(tmp_path):
    make_flowers(tmp_path/'one', n=70, size=48, seed=5, show_progress=False, n_workers=0)
    make_flowers(tmp_path/'two', n=70, size=48, seed=5, show_progress=False, n_workers=2)
    assert _files(tmp_path/'one')==_files(tmp_path/'two')

def test_seed_changes_images(tmp_path):
    make_flowers(tmp_path/'a', n=4, size=64, seed=0, show_progress=False)
    make_flowers(tmp_path/'b', n=4, size=64, seed=1, show_progress=False)
    assert _files(tmp_path/'a')!=_files(tmp_path/'b')

def test_image_size_and_mode():
    img = flower_field(5, size=96, seed=0)
    assert img.size==(96,96) and img.mode=='RGB'
    assert flower_field(5, size=(120,80), seed=0).size==(120,80)

def test_sizes_and_aspect_ratios_vary(tmp_path):
    make_flowers(tmp_path, n=30, size=100, seed=0, show_progress=False)
    sizes = {Image.open(p).size for p in (tmp_path/'images').glob('*.jpg')}
    ratios = [w/h for w,h in sizes]
    assert len(sizes) > 20 and min(ratios) < 0.8 and max(ratios) > 1.25
    assert all(60 <= min(s) and max(s) <= 160 for s in sizes)

def test_counts_uniform(tmp_path):
    csv = make_flowers(tmp_path, n=300, size=32, max_count=5, seed=0, show_progress=False)
    counts = pd.read_csv(csv)['count']
    assert counts.min()==0 and counts.max()==5
    assert counts.value_counts().min() > 30 # roughly 50 each

def test_points_match_counts_and_images(tmp_path):
    make_flowers(tmp_path, n=40, size=96, seed=2, show_progress=False)
    counts,pts = pd.read_csv(tmp_path/'counts.csv'),pd.read_csv(tmp_path/'points.csv')
    assert list(pts.columns)==['image','x','y','r']
    per = pts.groupby('image').size().reindex(counts['image'], fill_value=0)
    assert (per.to_numpy()==counts['count'].to_numpy()).all()
    for f,g in pts.groupby('image'):
        w,h = Image.open(tmp_path/'images'/f).size
        assert g['x'].between(0, w).all() and g['y'].between(0, h).all() and (g['r'] > 1).all()
    r = pts['r']/pts['image'].map(lambda f: min(Image.open(tmp_path/'images'/f).size))
    assert r.max()/r.min() >= 3 # within one small set; the generator's range is 5x

def test_heads_are_where_points_say():
    "Pixels at head centres differ from the ground far more than pixels at random places"
    at,rand = [],[]
    rng = np.random.default_rng(0)
    for s in range(20):
        img,pts,_ = render_field(4, (128,128), seed=s, backgrounds=['plain']) # few enough that random places mostly miss heads
        a = np.asarray(img, np.float32)
        ground = np.median(a.reshape(-1,3), 0)
        dist = lambda x,y: np.abs(a[int(y), int(x)] - ground).sum()
        at += [dist(x, y) for x,y,_ in pts]
        rand += [dist(*rng.uniform(0, 127, 2)) for _ in pts]
    assert np.mean(at) > 2*np.mean(rand)

def test_families_can_be_held_out(tmp_path):
    heads,bgs = [h for h in HEADS if h!='star'],[b for b in BACKGROUNDS if b!='grass']
    df = pd.read_csv(make_flowers(tmp_path, n=60, size=48, seed=0, heads=heads, backgrounds=bgs, show_progress=False))
    seen = {h for hs in df['heads'].dropna() for h in hs.split('+')}
    assert 'star' not in seen and 'grass' not in set(df['background']) and len(seen) >= 5
    only = pd.read_csv(make_flowers(tmp_path/'only', n=20, size=48, heads=['star'], backgrounds=['grass'], show_progress=False))
    assert set(only['background'])=={'grass'} and set(only['heads'].dropna())=={'star'}
    assert len(HEADS) >= 8 and len(BACKGROUNDS) >= 5

def test_fields_seen_at_an_angle(tmp_path):
    "'depth' fields: heads smaller and flatter towards the top; a flat field is drawn alike whether 'depth' may be drawn or not"
    both,flat = [pd.read_csv(make_flowers(tmp_path/k, n=80, size=96, seed=4, show_progress=False, **kw)) for k,kw in (('both',dict(layouts='flat,depth')),('flat',{}))]
    assert set(both['layout'])==set(LAYOUTS) and 0.15 < (both['layout']=='depth').mean() < 0.45 and set(flat['layout'])=={'flat'} # the default
    for f in both['image'][both['layout']=='flat']: assert (tmp_path/'both'/'images'/f).read_bytes()==(tmp_path/'flat'/'images'/f).read_bytes()
    corr = lambda g: np.corrcoef(g['y'], g['r'])[0,1] # radius against height in the image: 0 top, positive when nearer heads are larger
    def mean_corr(d, kind):
        pts,df = pd.read_csv(tmp_path/d/'points.csv'),pd.read_csv(tmp_path/d/'counts.csv')
        pts = pts[pts['image'].isin(df['image'][(df['layout']==kind) & (df['count'] >= 6)])]
        return np.mean([corr(g) for _,g in pts.groupby('image')])
    assert mean_corr('both', 'depth') > 0.6 and abs(mean_corr('flat', 'flat')) < 0.2
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/'depth'), '--n', '10', '--size', '48', '--layouts', 'depth'], capture_output=True, text=True)
    assert r.returncode==0, r.stderr
    assert set(pd.read_csv(tmp_path/'depth'/'counts.csv')['layout'])=={'depth'}
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/'x'), '--n', '2', '--layouts', 'tilt'], capture_output=True, text=True)
    assert r.returncode==2 and "unknown layout 'tilt'" in r.stderr and 'Traceback' not in r.stderr

def test_unknown_family_is_a_clear_error(tmp_path):
    with pytest.raises(FlowersError, match="unknown head family 'tulip'"): make_flowers(tmp_path, n=2, heads=['tulip'])
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/'x'), '--n', '2', '--backgrounds', 'sand'], capture_output=True, text=True)
    assert r.returncode==2 and "unknown background family 'sand'" in r.stderr and 'Traceback' not in r.stderr

def test_min_count_sets_the_fewest_heads(tmp_path):
    df = pd.read_csv(make_flowers(tmp_path/'a', n=12, max_count=5, min_count=3, show_progress=False))
    assert df['count'].between(3, 5).all() and json.loads((tmp_path/'a'/'synth.json').read_text())['min_count']==3
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/'x'), '--n', '2', '--min-count', '6', '--max-count', '5'], capture_output=True, text=True)
    assert r.returncode==2 and 'min_count <= max_count' in r.stderr and 'Traceback' not in r.stderr

@pytest.mark.parametrize('kw,msg', [(dict(n=-1), '--n -1: must be a whole number of at least 0'), (dict(size=5), '--size 5: must be a whole number from 32 to 4096'),
                                    (dict(size=99_999), '--size 99999: must be a whole number from 32 to 4096'), # numpy's MemoryError for 24 GB
                                    (dict(max_count=100_000), '--max-count 100000: at most 1024 heads'), # a negative n was a traceback, 100000 heads drew for hours
                                    (dict(seed=-1), '--seed -1: must be a whole number from 0 to 4294967295')]) # numpy's traceback
def test_numbers_no_data_set_can_have(tmp_path, kw, msg):
    with pytest.raises(FlowersError, match=msg): make_flowers(tmp_path/'x', show_progress=False, **{'n': 2, **kw})
    assert not (tmp_path/'x').exists() # refused before any folder is made
    args = [a for k,v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/'x'), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode==2 and msg in r.stderr and 'Traceback' not in r.stderr

def test_never_draws_over_a_users_data_set(tmp_path):
    "A folder with a counts.csv the generator did not write is someone's data: refused, exit 2, every file as it was; its own sets are redrawn"
    mine = tmp_path/'mine'
    (mine/'images').mkdir(parents=True)
    (mine/'images'/'00000.jpg').write_bytes(b'my photo')
    (mine/'counts.csv').write_text('image,count\n00000.jpg,7\n')
    before = _files(mine)
    r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(mine), '--n', '3'], capture_output=True, text=True, timeout=120)
    assert r.returncode==2 and 'did not write' in r.stderr and 'Traceback' not in r.stderr and _files(mine)==before
    make_flowers(tmp_path/'ours', n=6, size=32, show_progress=False)
    assert len(pd.read_csv(make_flowers(tmp_path/'ours', n=4, size=32, show_progress=False)))==4 # a set it made: drawn again
    assert sorted(p.name for p in (tmp_path/'ours'/'images').iterdir())==[f'{i:05d}.jpg' for i in range(4)] # none of the first set's left

def test_default_data_regenerates_an_older_set(tmp_path, capsys):
    "A set without this generator's stamp is never silently reused as the default"
    (tmp_path/'images').mkdir(parents=True)
    (tmp_path/'images'/'old.jpg').write_bytes(b'x')
    (tmp_path/'counts.csv').write_text('image,count\nold.jpg,3\n')
    csv = default_data(n=6, size=32, path=tmp_path)
    assert 'regenerating' in capsys.readouterr().out
    assert len(pd.read_csv(csv))==6 and not (tmp_path/'images'/'old.jpg').exists()
    before = csv.stat().st_mtime_ns
    default_data(n=6, size=32, path=tmp_path)
    assert csv.stat().st_mtime_ns==before and capsys.readouterr().out==''

def test_two_first_runs_share_the_default_set(tmp_path):
    "A second run arriving while the first redraws an older set waits for it: it deleted images the first then trained on"
    data = tmp_path/'flowers'
    (data/'images').mkdir(parents=True)
    (data/'counts.csv').write_text('image,count\nold.jpg,3\n') # an older generator's set: both runs must redraw it
    # fastai imported in both first, then the second arrives when the first has drawn most of the set
    draw = "import os, sys, time; from pathlib import Path; from flowers.data import default_data\n" \
           "data,who,ready = Path(sys.argv[1]),sys.argv[2],Path(sys.argv[3])\n" \
           "def drawn():\n" \
           "    try: return len(os.listdir(data/'images'))\n" \
           "    except OSError: return 0 # the first removing the older set's images folder\n" \
           "if who=='second': ready.touch()\n" \
           "while who=='first' and not ready.exists() or who=='second' and drawn() < 300: time.sleep(.02)\n" \
           "csv = default_data(n=400, size=96, path=data); import pandas as pd; from PIL import Image\n" \
           "for f in pd.read_csv(csv).image: Image.open(data/'images'/f).load() # as training would, at once"
    ps = [subprocess.Popen([sys.executable, '-c', draw, str(data), who, str(tmp_path/'ready')], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for who in ('first', 'second')]
    (out1,err1),(out2,err2) = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps]==[0,0], err1+err2
    assert 'waiting' in err2 and 'regenerating' not in out2 # it found the set drawn
    df = pd.read_csv(data/'counts.csv')
    assert len(df)==400 and sorted(p.name for p in (data/'images').iterdir())==sorted(df.image)

def test_installed_package_keeps_its_data_out_of_site_packages(tmp_path):
    "Installed, not run from a checkout, the default data set goes to fastai's data folder, not site-packages/data"
    import shutil, sysconfig
    root,site = Path(__file__).resolve().parents[1],tmp_path/'site'
    shutil.copytree(root/'flowers', site/'flowers', ignore=shutil.ignore_patterns('__pycache__')) # the package as pip lays it out
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(site), sysconfig.get_paths()['purelib'], *os.environ.get('PYTHONPATH', '').split(os.pathsep)]).rstrip(os.pathsep), 'FASTAI_HOME': str(tmp_path/'fastai')}
    code = "import flowers; from flowers.data import default_data; csv = default_data(n=2, size=32); print(flowers.__file__); print(csv)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode==0, r.stderr
    where,csv = r.stdout.splitlines()[-2:]
    assert Path(where).is_relative_to(site) and Path(csv)==tmp_path/'fastai'/'data'/'flowers'/'counts.csv' and Path(csv).is_file()
    assert not (site/'data').exists()
    from flowers.data import data_dir
    assert data_dir()==root/'data' # in this checkout, as before

def _in_session(sid) -> list:
    "Processes of session `sid`, from /proc (procps' pgrep may be absent)"
    def _sid(stat):
        try: return int(stat.read_text().rsplit(')', 1)[1].split()[3]) # pid (comm) state ppid pgrp session ...
        except (OSError, IndexError, ValueError): return None # gone meanwhile
    return [d.name for d in Path('/proc').iterdir() if d.name.isdigit() and _sid(d/'stat')==sid]

def test_sigterm_while_drawing_leaves_no_processes(tmp_path):
    "SIGTERM (a scheduler's, `kill`'s) while the pool draws: the CLI stops and its drawing processes with it (they were left waiting forever)"
    import signal, time
    p = subprocess.Popen([sys.executable, '-m', 'flowers.synth', str(tmp_path/'d'), '--n', '20000'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        while not ((tmp_path/'d'/'images').is_dir() and len(list((tmp_path/'d'/'images').iterdir())) >= 50): # the pool is drawing
            assert p.poll() is None and time.sleep(.2) is None
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
        time.sleep(1)
        left = _in_session(p.pid)
        assert p.returncode==130 and 'Interrupted' in err and 'Traceback' not in err and not left, (p.returncode, err, left)
        assert not (tmp_path/'d'/'counts.csv').exists() # never a short data set
    finally:
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass

def _draw_in_worker(out):
    from flowers.synth import make_flowers
    return len(pd.read_csv(make_flowers(out, n=70, size=48, show_progress=False)))

def test_drawing_inside_a_pool_worker(tmp_path):
    "A pool's worker process may not start processes: fastcore's pool then returned nothing, and an empty CSV was written"
    from multiprocessing import get_context
    with get_context('spawn').Pool(1) as p: assert p.apply(_draw_in_worker, (tmp_path/'d',))==70
