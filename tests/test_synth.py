import subprocess, sys, numpy as np, pandas as pd
from flowers.synth import flower_field, make_flowers

def _files(path): return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}

def test_cli_is_deterministic(tmp_path):
    for d in ('a','b'):
        r = subprocess.run([sys.executable, '-m', 'flowers.synth', str(tmp_path/d), '--n', '12', '--seed', '3'], capture_output=True, text=True)
        assert r.returncode==0, r.stderr
    a,b = _files(tmp_path/'a'),_files(tmp_path/'b')
    assert len(a)==13 and a==b
    df = pd.read_csv(tmp_path/'a'/'counts.csv')
    assert list(df.columns)==['image','count'] and all((tmp_path/'a'/'images'/f).is_file() for f in df.image)

def test_seed_changes_images(tmp_path):
    make_flowers(tmp_path/'a', n=4, size=64, seed=0, show_progress=False)
    make_flowers(tmp_path/'b', n=4, size=64, seed=1, show_progress=False)
    assert _files(tmp_path/'a')!=_files(tmp_path/'b')

def test_image_size_and_mode():
    img = flower_field(5, size=96, seed=0)
    assert img.size==(96,96) and img.mode=='RGB'

def test_counts_uniform(tmp_path):
    csv = make_flowers(tmp_path, n=300, size=32, max_count=5, seed=0, show_progress=False)
    counts = pd.read_csv(csv)['count']
    assert counts.min()==0 and counts.max()==5
    assert counts.value_counts().min() > 30 # roughly 50 each

def test_more_heads_more_flower_pixels():
    "Bright (petal-coloured) area grows with the count; soil and grass stay darker"
    def bright(c): return np.mean([(np.asarray(flower_field(c, 128, seed=s)).max(-1)>190).mean() for s in range(4)])
    b = [bright(c) for c in (0,3,12,20)]
    assert b[0] < 0.005 and b==sorted(b) and b[3] > 0.05
