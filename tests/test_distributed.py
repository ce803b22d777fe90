"Data-parallel training with torchrun: 2 processes on the CPU (gloo), as on several GPUs (nccl)"
import json, os, re, shutil, subprocess, sys, pandas as pd, pytest
from flowers.data import count_dls
from flowers.predict import find_images, take_shard, load_counter, predict_table
from flowers import FlowersError
from flowers.distributed import check_gpus
from test_predict import run_predict
from conftest import load_learner_count

CPU = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''} # the gloo path, on a machine with a GPU too
def _cpu(tmp): return {**CPU, 'TMPDIR': str(tmp)} # torchrun's log folders go there: in /tmp each run left its own behind

def _torchrun(tmp, *args, ok=True):
    "`torchrun` of `args` in 2 processes on the CPU, its log folders in `tmp`; its finished process, which must have succeeded if `ok`"
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *map(str, args)],
                       capture_output=True, text=True, timeout=600, env=_cpu(tmp))
    assert r.returncode==0 or not ok, r.stdout[-3000:] + r.stderr[-3000:]
    return r

@pytest.fixture(scope='module')
def ddp_run(flower_data, tmp_path_factory):
    "The `trained` fixture's settings, launched as 2 processes by torchrun, its epochs those that fit half a minute; in fp32, as the report is, so that the epoch's MAE can be compared with it"
    out = tmp_path_factory.mktemp('ddp')/'run'
    r = _torchrun(out.parent, '-m', 'flowers.train', '--data', flower_data[0], '--out', out, '--size', '32', '--bs', '8', '--minutes', '.5',
                  '--pretrained', 'no', '--lr', 'find', '--precision', 'fp32')
    return out, r.stdout + r.stderr

def _fitted(log) -> int: return int(re.search(r'(\d+) epochs fit 0.5 minutes', log)[1])

def test_epochs_fit_the_minutes_in_every_process(ddp_run):
    "Each process timed its share of the batches, and all train the first process's count (they would wait for each other forever otherwise)"
    out,log = ddp_run
    said = re.findall(r'(\d+) epochs fit 0.5 minutes on this machine \(.* in each of 2 processes', log)
    trained = re.findall(r'with fit_one_cycle: (\d+) epochs', log)
    assert len(said)==1 and trained==said*2, (said, trained) # said once, by the first process
    # the epochs trained: those said, or those of the last cut or stretch `KeepBudget` made of them as they ran (said, by the first)
    kept = re.findall(r'(\d+) epochs fit the budget, not (\d+)', log)
    assert all(int(was)!=int(now) for now,was in kept)
    assert json.loads((out/'metrics.json').read_text())['epochs']==int((kept[-1] if kept else said)[0])==len(pd.read_csv(out/'history.csv'))

def test_both_ranks_train_half_the_batches(ddp_run, flower_data):
    _,log = ddp_run
    said = re.findall(r'rank (\d) of 2: (\d+) training batches an epoch', log)
    one = len(count_dls(flower_data[1], size=32, bs=8, seed=42, valid_pct=0.2).train) # a single process's batches
    assert sorted(r for r,_ in said)==['0','1'] and all(int(v)==(one+1)//2 for _,v in said), (said, one) # once each: not for the timing too

def test_lr_find_runs_once_and_is_shared(ddp_run):
    out,log = ddp_run
    lrs = re.findall(rf'with fit_one_cycle: {_fitted(log)} epochs, lr=([\d.e-]+)', log)
    assert len(lrs)==2 and lrs[0]==lrs[1] and (out/'lr_find.png').is_file()

def test_run_folder_complete_and_model_loads(ddp_run, trained, flower_data):
    out,_ = ddp_run
    assert {p.name for p in trained.iterdir() if not p.name.startswith('.')} <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith('.') for p in out.iterdir()) # no temporary files from two writers
    assert not (out/'state.json').exists() and not (out/'checkpoint.pth').exists()
    img = sorted((flower_data[0]/'images').glob('*.jpg'))[0]
    # the plain pickle in a fresh process counts as the safe format does: one model, written whole by one process
    assert abs(load_learner_count(out/'export.pkl', img, fresh=True) - load_counter(out/'model.safetensors', precision='fp32').predict(img)) < 1e-3

def test_validation_covers_everything(ddp_run, trained):
    "Metrics come from the whole validation set gathered from both processes"
    out,log = ddp_run
    m2 = json.loads((out/'metrics.json').read_text())
    assert len(pd.read_csv(out/'predictions.csv'))==len(pd.read_csv(trained/'predictions.csv'))
    hist = pd.read_csv(out/'history.csv')
    # the epoch's MAE was gathered from both processes: the report's, on every validation image in one process
    # (with fastai's plain `mae` it was rank 0's half: 9% off here)
    assert len(hist)==m2['epochs'] and hist['mae'].iloc[-1]==pytest.approx(m2['mae'], rel=1e-3), (hist['mae'].iloc[-1], m2['mae'])
    # a few epochs at 32 px say nothing of accuracy (batch norm's running statistics have seen 4 batches): the report is of every image
    preds = pd.read_csv(out/'predictions.csv')
    assert abs(m2['mae'] - (preds['predicted']-preds['count']).abs().mean()) < 1e-4 and preds['image'].is_unique

FIT_SCRIPT = """
import sys, time, json, torch
from fastai.vision.all import Callback
from flowers.distributed import setup_ddp, teardown_ddp, ddp_ctx
from flowers.budget import KeepBudget, fit_epochs
from flowers.data import count_dls
from flowers.learner import count_learner
class Keep(Callback): # each process's extent layer, as the fit ends
    def after_fit(self):
        torch.save(self.learn.point_supervision.extent.state_dict(), f'{sys.argv[2]}/extent{torch.distributed.get_rank()}.pth')
setup_ddp(); rank = torch.distributed.get_rank()
learn = count_learner(count_dls(sys.argv[1], size=32, bs=8), 'resnet18', pretrained=False)
with ddp_ctx(learn), learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=Keep())
learn = count_learner(count_dls(sys.argv[1], size=32, bs=8), 'resnet18', pretrained=False)
fit,_ = fit_epochs(learn, 10_000, minutes=2) # far under the schedule's: timed again, by every process or none
keep = KeepBudget(end=time.time() + (0 if rank==0 else 600)) # out of time in the first process alone
with ddp_ctx(learn), learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(6, 3e-3, cbs=keep)
json.dump(dict(epochs=len(learn.recorder.values), lrs=learn.recorder.hps['lr'], fit=fit), open(f'{sys.argv[2]}/keep{rank}.json', 'w'))
teardown_ddp()
"""

@pytest.fixture(scope='module')
def ddp_fits(flower_data, tmp_path_factory):
    "Two fits of `count_learner`s in 2 processes, in one torchrun (each start of it imports torch twice): one epoch keeping each process's extent layer, then six epochs with the first process out of time"
    out = tmp_path_factory.mktemp('fits')
    (out/'fit.py').write_text(FIT_SCRIPT)
    return out, _torchrun(out, out/'fit.py', flower_data[1], out)

def test_processes_teach_one_extent_layer(ddp_fits):
    "`PointSupervision`'s extent layer is not in the network, so DDP did not average it: each process kept its own, taught by its half of the batches"
    import torch
    out,_ = ddp_fits
    a,b = [torch.load(out/f'extent{k}.pth', weights_only=True) for k in (0, 1)]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a) and a['weight'].abs().sum() > 0

def test_processes_keep_the_first_ones_budget(ddp_fits):
    "A cut to the epochs that still fit is the first process's, in every process: one that stopped sooner would leave the others waiting"
    out,r = ddp_fits
    a,b = [json.loads((out/f'keep{k}.json').read_text()) for k in (0, 1)]
    assert a==b and a['epochs']==3 and r.stdout.count('after epoch 1: 2 epochs took')==1, r.stdout[-3000:]

def test_processes_time_again_together(ddp_fits):
    "A first timing far under the schedule's epochs is timed again in every process, as each timing is a data-parallel fit, and all keep the first one's epochs"
    from flowers.budget import RETIME
    out,r = ddp_fits
    a,b = [json.loads((out/f'keep{k}.json').read_text()) for k in (0, 1)]
    again = r.stdout.count("under half the schedule's 10000: timed again") # said by the first process alone
    assert a['fit']==b['fit'] and 1 <= again <= RETIME and f"the fastest of {again+1} timings" in r.stdout, r.stdout[-3000:]

def test_shards_make_the_whole_table(trained, flower_data, tmp_path):
    "Two jobs of an array (one through the CLI) make the whole table, row for row"
    items,_ = find_images([flower_data[0]/'images'])
    whole = predict_table(load_counter(trained), items, show_progress=False)
    r = run_predict(trained, flower_data[0]/'images', '--shard', '0/2', '--out', tmp_path/'part-0.csv') # job 0 through the CLI
    assert r.returncode==0, r.stderr
    parts = [pd.read_csv(tmp_path/'part-0.csv', keep_default_na=False),
             predict_table(load_counter(trained), take_shard(items, '1/2'), show_progress=False)] # job 1 in-process
    assert [len(p) for p in parts]==[24,24]
    both = pd.concat(parts).sort_values('image').reset_index(drop=True)
    pd.testing.assert_frame_equal(both, whole.sort_values('image').reset_index(drop=True), check_exact=False, atol=1e-4)

def test_shards_write_their_map_pictures_side_by_side(trained, flower_data, tmp_path):
    "Jobs of an array writing --maps into one folder: photos of one name in two folders (a camera's IMG_0001 each day) both keep their picture"
    for day in ('day1', 'day2'):
        (tmp_path/day).mkdir()
        shutil.copy(flower_data[0]/'images'/'00000.jpg', tmp_path/day/'IMG_0001.jpg')
    for k in (0, 1): # each job's first image
        r = run_predict(trained, tmp_path/'day1', tmp_path/'day2', '--shard', f'{k}/2', '--maps', tmp_path/'maps')
        assert r.returncode==0, r.stderr
    assert sorted((tmp_path/'maps').glob('*.png'))==[tmp_path/'maps'/f for f in ('00000-IMG_0001.png', '00001-IMG_0001.png')] # numbered as in the whole list

@pytest.mark.parametrize('shard', ['3/3', '5/2', 'a/b', '2', '1/0', '-1/2'])
def test_bad_shard(shard):
    with pytest.raises(FlowersError, match='must be K/N with 0 <= K < N'): take_shard([], shard)

def test_more_shards_than_images(flower_data):
    items,_ = find_images([flower_data[0]/'images'])
    assert take_shard(items, '60/100')==[] and sum(len(take_shard(items, f'{k}/100')) for k in range(100))==len(items)

HELP = """
import contextlib, io, runpy, sys
for mod in ('predict', 'synth', 'train', 'serve'): # none imports the ones before it: each is run the way -m runs it
    sys.argv = [f'/x/flowers/{mod}.py', '--help']
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit): runpy.run_module(f'flowers.{mod}', run_name='__main__', alter_sys=True)
    print(mod, out.getvalue().splitlines()[0])
"""

def test_help_names_the_module_without_warnings():
    "One process for the four CLIs: a runpy warning is an error, and each usage line names `python -m flowers.X`"
    r = subprocess.run([sys.executable, '-W', 'error::RuntimeWarning', '-c', HELP], capture_output=True, text=True, timeout=120)
    assert r.returncode==0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [l.split()[:2] for l in lines[-4:]]==[[m, 'usage:'] for m in ('predict','synth','train','serve')]
    assert all(f'usage: python -m flowers.{l.split()[0]}' in l for l in lines[-4:]), lines
    assert 'RuntimeWarning' not in r.stderr

def test_more_processes_than_gpus_is_said():
    "torchrun --nproc_per_node 2 on a machine with one GPU failed in CUDA's 'invalid device ordinal', under torchrun's traceback"
    with pytest.raises(FlowersError, match=r"2 training processes on this machine but 1 CUDA GPU: .*--nproc_per_node 1.*CUDA_VISIBLE_DEVICES=''"): check_gpus(2, 1)
    check_gpus(2, 2); check_gpus(1, 4)

def test_each_rank_says_its_error_on_a_line_of_its_own(tmp_path):
    "A user error under torchrun: both processes printed 'error: ...' at once, and their lines ran into one"
    r = _torchrun(tmp_path, '-m', 'flowers.train', '--data', tmp_path/'nowhere', ok=False)
    assert r.returncode!=0
    said = [l for l in r.stderr.splitlines() if l.startswith('error')]
    # torchrun stops every process once one has failed: a rank that had not yet reached the error says nothing
    want = [f"error (rank {k} of 2): --data {tmp_path/'nowhere'}: no such file or folder" for k in (0, 1)]
    assert said and len(set(said))==len(said) and set(said) <= set(want), r.stderr[-2000:]
