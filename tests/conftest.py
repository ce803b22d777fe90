import os, pytest
# pytest-xdist's workers share the cores: each its share of threads, unless the user set OMP_NUM_THREADS (pytest's first
# process, which starts them, has set its default of 2 in their environment, so it notes whether that was the user's)
workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 0))
if workers and not os.environ.get('FLOWERS_USER_THREADS'): os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 2)//workers))
elif not workers:
    os.environ.setdefault('FLOWERS_USER_THREADS', '1' if 'OMP_NUM_THREADS' in os.environ else '')
    os.environ.setdefault('OMP_NUM_THREADS', '2')
from flowers.synth import make_flowers

def load_learner_count(pkl, # An exported model
                       img, # An image file
                       fresh=False, # In a new Python, as another script loads it: nothing of flowers imported first
                      ) -> float:
    "`img`'s count by `pkl` loaded with plain `load_learner`; a new Python costs ~6 s of imports, so one test per kind of run asks `fresh`"
    if not fresh:
        from fastai.vision.all import load_learner
        return float(load_learner(pkl).predict(img)[0][0])
    import subprocess, sys
    code = f"from fastai.vision.all import load_learner; print(float(load_learner({str(pkl)!r}).predict({str(img)!r})[0][0]))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd='/')
    assert r.returncode==0, r.stderr
    return float(r.stdout.strip().splitlines()[-1])

def main_here(capsys, main, *args, **kw) -> tuple:
    "A command run in this process through its function `main` (`flowers.predict.main`, `flowers.train.main`), as a new Python, which costs 6 s of imports, would: exit code, stdout, stderr (its warnings too)"
    import warnings
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        try: main(*map(str, args), **kw); code = 0
        except SystemExit as e: code = e.code
    out,err = capsys.readouterr()
    return code, out, err + ''.join(f'{x.message}\n' for x in w)

@pytest.fixture(scope='session')
def flower_data(tmp_path_factory):
    "A small synthetic data set shared by the whole session: (folder, csv)"
    path = tmp_path_factory.mktemp('flowers')
    csv = make_flowers(path, n=48, size=64, max_count=8, seed=1, show_progress=False)
    return path, csv

@pytest.fixture(scope='session')
def trained(flower_data, tmp_path_factory):
    "Run folder of a tiny resnet34 trained once per session through the CLI, in a subprocess"
    import subprocess, sys
    out = tmp_path_factory.mktemp('run')
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--data', str(flower_data[0]), '--out', str(out), '--size', '32',
                        '--bs', '8', '--epochs', '2', '--pretrained', 'no', '--lr', 'find'], capture_output=True, text=True, timeout=600)
    assert r.returncode==0, r.stdout + r.stderr
    return out

@pytest.fixture
def short_schedules(monkeypatch):
    "Every schedule's epochs a sixth (4 in fp32): a tiny data set fits 3 times as many in any budget, so its run ends by that cap, long before a cut"
    # the real schedules' 24 or 36 make 72 or 108 epochs of a small set: the same path, six times the test's time
    from flowers.settings import SCHEDULES
    for s in SCHEDULES.values(): monkeypatch.setitem(s, 'epochs', s['epochs']//6)
