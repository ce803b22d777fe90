"The default epochs fitted to the time budget: measured on the run's own batches, the run that follows the same as one told them, and kept to it."
import itertools, json, math, os, re, shutil, subprocess, sys, time, pytest, torch, numpy as np, pandas as pd
from flowers.budget import budget_epochs, budget_images, finish_seconds, time_batches, KeepBudget, MAX_SCALE, YARDSTICK, short_of, short_note
from flowers.settings import default_schedule
from flowers.errors import FlowersError
from flowers.train import train
from flowers.predict import main as predict_main
from conftest import main_here

def test_more_time_or_a_faster_machine_fits_more_epochs():
    "Epochs grow with the minutes and the machine's speed, shrink with the time already spent, and stay within 1 and 3x the schedule's"
    per = (5e-3, 2e-3) # seconds per training and validation image: this 2-core EPYC's in fp32 at 64 px
    n = budget_epochs(per, 30, 14)
    assert budget_epochs(per, 30, 14, minutes=6) > n > budget_epochs((7e-3, 3e-3), 30, 14) >= 1
    assert budget_epochs(per, 120, 14) < n # data generation, decoding and lr_find are the budget's too
    assert budget_epochs(per, 30, 14, fp32=3.) <= n # the export counts the validation images again
    assert budget_epochs(per, 400, 14)==1 # out of time: still a model
    assert budget_epochs((1e-5, 1e-5), 0, 14)==MAX_SCALE*14 # a GPU: not past what was measured to help
    # data-parallel: each process trains its share of an epoch at the speed it was timed at; the export and report are the first's alone
    assert n < budget_epochs(per, 30, 14, procs=2) < 2*n + 2
    epoch = YARDSTICK[0]*per[0] + YARDSTICK[1]*per[1]
    assert 30 + n*epoch + sum(YARDSTICK)*per[1] < 5*60 # the epochs and calibration's pass fit the 5 minutes

def test_a_smaller_data_set_fills_the_minutes_with_more_epochs():
    "Fewer images than the default set's: their own epochs that fit the minutes, up to 3x the schedule's; more images: the default set's epochs"
    per,small = (5e-3, 2e-3),(320, 80)
    assert budget_images(per, small)==small and budget_images(per, (16000, 4000))==YARDSTICK==budget_images(per, YARDSTICK)
    assert budget_images(per, (1550, 600))==YARDSTICK # fewer trained, but more validated: a longer epoch than the default set's
    n = budget_epochs(per, 30, 14, n=small)
    assert budget_epochs(per, 30, 14) < n <= MAX_SCALE*14 and budget_epochs(per, 30, 40, n=small) > MAX_SCALE*14
    epoch = small[0]*per[0] + small[1]*per[1]
    assert 30 + budget_epochs(per, 30, 40, n=small)*epoch + finish_seconds(per, n=small) < 5*60 # its epochs and what follows fit the 5 minutes
    assert finish_seconds(per, n=small) < finish_seconds(per) # calibrating and reporting 400 images is quicker than 2,000

def _tiny_learner(csv, points=True, verify=True):
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from fastai.vision.all import resnet18, set_seed
    set_seed(3)
    return count_learner(count_dls(csv, size=32, bs=8, seed=3, points=points, verify=verify), resnet18, pretrained=False)

def test_epochs_at_most_three_times_the_schedules_are_said(flower_data, capsys):
    "Minutes enough for more epochs than the budget trains: the run would end sooner than asked, so it says why"
    from flowers.budget import fit_epochs
    n,keep = fit_epochs(_tiny_learner(flower_data[1]), 1, minutes=60)
    out = capsys.readouterr().out
    assert n==MAX_SCALE and f"{n} epochs fit 60 minutes" in out and f"at most {MAX_SCALE} times that" in out and keep.end > time.time()
    n,keep = fit_epochs(_tiny_learner(flower_data[1]), 1000, minutes=.5) # fewer than the cap: not said
    assert n < MAX_SCALE*1000 and 'at most' not in capsys.readouterr().out
    # and they are this set's epochs, filling most of the half minute, not the ~0.5 s the default set's fitted epochs of it take
    assert n*keep.timed > 10

def test_a_fit_far_under_the_schedule_is_timed_again(flower_data, capsys):
    "Under half the schedule's epochs: timed again, as a machine busy for a moment times slow, and the fastest timing kept"
    from flowers.budget import fit_epochs, RETIME
    n,keep = fit_epochs(_tiny_learner(flower_data[1]), 10_000, minutes=2)
    out = capsys.readouterr().out
    said = [float(o) for o in re.findall(r"at ([\d.]+) ms a training image, under half the schedule's 10000: timed again", out)]
    kept = float(re.search(r"epochs fit 2 minutes on this machine \(a training image ([\d.]+) ms", out)[1])
    # a third timing only where the second was a fifth faster: the speed of a machine busy for a moment
    assert 1 <= len(said) <= RETIME and f"the fastest of {len(said)+1} timings" in out and kept <= min(said) and said[-1] <= said[0]
    assert n < 10_000/2 and keep.end > time.time()
    n,keep = fit_epochs(_tiny_learner(flower_data[1]), 2, minutes=2) # its schedule's fit, and more: timed once
    out = capsys.readouterr().out
    assert 'timed again' not in out and 'timings' not in out and n >= 1

def test_a_larger_data_set_says_how_long_it_will_take(flower_data, tmp_path, capsys):
    "More images than the default set's: the default set's epochs, each longer, and the run says so: 'epochs fit 5 minutes' read as a 5-minute run"
    from flowers.budget import fit_epochs
    df,src = pd.read_csv(flower_data[1]),flower_data[0]/'images'
    (tmp_path/'images').mkdir()
    names = [f'{i:05d}.jpg' for i in range(2400)] # 1.2 times the default set: the fields of `flower_data` again, linked, not copied
    for i,f in enumerate(names): os.link(src/df.image[i % len(df)], tmp_path/'images'/f)
    pd.DataFrame(dict(image=names, count=[df['count'][i % len(df)] for i in range(len(names))])).to_csv(tmp_path/'counts.csv', index=False)
    n,keep = fit_epochs(_tiny_learner(tmp_path/'counts.csv', points=False, verify=False), 24, minutes=5) # the same images: checked once already
    out = capsys.readouterr().out
    assert f"{n} epochs fit 5 minutes on this machine" in out and "An epoch of these 2,400 images takes 1.2 times the default set's 2,000: the run will take about " in out
    assert n <= MAX_SCALE*24 and keep.end > time.time() + 60

def test_timing_leaves_the_learner_as_it_was(flower_data):
    "`time_batches` measures by training, then puts the weights and every random stream back, as `lr_find` does"
    learn = _tiny_learner(flower_data[1])
    before = {k:v.clone() for k,v in learn.model.state_dict().items()}
    state = torch.get_rng_state()
    tr,va = time_batches(learn, n=2, skip=1)
    assert tr > 0 and va > 0 and learn.opt is None and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k,v in learn.model.state_dict().items()) and all(p.grad is None for p in learn.model.parameters())

def test_a_budget_kept_compresses_the_cycle(flower_data, tmp_path):
    "Epochs slower than timed: one cycle's rest runs in the epochs that fit, ending as a cycle ends; saved, so that a resumed run goes on with it"
    from fastai.vision.all import combined_cos
    from flowers.checkpoint import Checkpoint
    from flowers.settings import read_state
    learn,lr = _tiny_learner(flower_data[1]),3e-3
    keep,state = KeepBudget(end=time.time()),dict(args=dict(epochs=6)) # out of time from the start: one more epoch after the first two
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(6, lr, cbs=[keep, Checkpoint(tmp_path, state)])
    assert keep.cut==dict(epoch=2, pct=2/6, epochs=3) and len(learn.recorder.values)==3 and len(pd.read_csv(tmp_path/'history.csv'))==3
    saved = read_state(tmp_path)
    assert saved['cut']==keep.cut and saved['args']['epochs']==3 and saved['epochs_done']==3
    # fastai's one cycle, as `fit_one_cycle` schedules it: as planned for two epochs, then the rest of it in one
    cycle,n = combined_cos(.25, lr/25, lr, lr/25/1e5),len(learn.dls.train)
    pct = [i/(6*n) for i in range(2*n)] + [2/6 + 4/6*i/n for i in range(n)]
    lrs = learn.recorder.hps['lr']
    assert np.allclose(lrs, [cycle(p) for p in pct], rtol=1e-4) # fastai schedules in float32
    # resumed after the second epoch, as `--resume` does with the saved cut: the same learning rates for the third
    resumed = _tiny_learner(flower_data[1])
    with resumed.no_bar(), resumed.no_logging(): resumed.fit_one_cycle(saved['args']['epochs'], lr, start_epoch=2, cbs=KeepBudget(cut=saved['cut']))
    assert np.allclose(resumed.recorder.hps['lr'], lrs[2*n:], rtol=1e-4)

def test_a_plan_not_stretched_is_the_fit_told_its_epochs(flower_data):
    "A fit given the most epochs it may be stretched to, and planned for fewer: those, to the bit as a fit told them, while they run as timed"
    from fastai.vision.all import set_seed
    def _fit(n, **kw):
        set_seed(0, reproducible=True) # the same weights to start from, and the same batches
        learn = _tiny_learner(flower_data[1])
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n, 3e-3, **kw)
        return learn
    a,b = _fit(6, cbs=KeepBudget(plan=3, most=6)),_fit(3)
    assert len(a.recorder.values)==3 and a.recorder.hps['lr']==b.recorder.hps['lr']
    wa,wb = a.model.state_dict(),b.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

def test_epochs_faster_than_timed_stretch_the_cycle(flower_data, tmp_path):
    "Time to spare: the rest of one cycle stretched over more epochs, up to the fit's most; saved, so that a resumed run goes on with it"
    from fastai.vision.all import combined_cos
    from flowers.checkpoint import Checkpoint
    from flowers.settings import read_state
    learn,lr,now = _tiny_learner(flower_data[1]),3e-3,time.time()
    keep,state = KeepBudget(end=now + 600, fill=now + 600, plan=5, most=8),dict(args=dict(epochs=5))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, lr, cbs=[keep, Checkpoint(tmp_path, state)])
    assert keep.cut==dict(epoch=2, pct=2/5, epochs=8) and len(learn.recorder.values)==8
    assert read_state(tmp_path)['args']['epochs']==8
    # planned for five epochs for the first two, then the rest of the same cycle over six
    cycle,n = combined_cos(.25, lr/25, lr, lr/25/1e5),len(learn.dls.train)
    pct = [i/(5*n) for i in range(2*n)] + [2/5 + 3/5*i/(6*n) for i in range(6*n)]
    assert np.allclose(learn.recorder.hps['lr'], [cycle(p) for p in pct], rtol=1e-4, atol=lr*1e-5) # fastai schedules in float32

def test_late_in_the_cycle_nothing_is_stretched(flower_data):
    "Past half the cycle, where the learning rate is falling, time to spare is left: a stretch there would hold it low for longer, not learn more"
    learn,now = _tiny_learner(flower_data[1]),time.time()
    keep = KeepBudget(end=now + 600, fill=now + 600, plan=3, most=6)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(6, 3e-3, cbs=keep)
    assert keep.cut is None and len(learn.recorder.values)==3

def test_fine_tuning_keeps_its_frozen_epochs(flower_data):
    "`fine_tune`'s frozen epochs are not the budget's to cut; its unfrozen ones are"
    from fastai.vision.all import Callback
    class Epochs(Callback): # the epochs each fit ran
        def before_fit(self): self.fits = getattr(self, 'fits', []) + [0]
        def after_epoch(self): self.fits[-1] += 1
    learn,keep,epochs = _tiny_learner(flower_data[1]),KeepBudget(end=time.time()),Epochs()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(4, freeze_epochs=4, cbs=[keep, epochs])
    assert epochs.fits==[4, 3] and keep.cut==dict(epoch=2, pct=.5, epochs=3)

def test_a_budget_in_time_is_left_alone(flower_data):
    "Epochs as fast as timed, or told by the user: the one cycle fastai plans, every epoch of it"
    learn = _tiny_learner(flower_data[1])
    keep = KeepBudget(end=time.time() + 600)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 3e-3, cbs=keep)
    assert keep.cut is None and len(learn.recorder.values)==3

def test_a_fitted_run_is_the_run_told_its_epochs(flower_data, tmp_path, capsys, short_schedules):
    "No --epochs: the epochs that fit --minutes, said and recorded; its weights are those of a run given that many, to the bit"
    a = train(flower_data[1], out=tmp_path/'a', size=32, bs=8, pretrained='no', minutes=1.5)
    n = json.loads((tmp_path/'a'/'metrics.json').read_text())['epochs']
    assert f"{n} epochs fit 1.5 minutes on this machine" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path/'a'/'history.csv'))==n and json.loads((tmp_path/'a'/'model.json').read_text())
    ma = json.loads((tmp_path/'a'/'metrics.json').read_text())
    assert ma['schedule_epochs']==default_schedule(ma['precision'])['epochs'] and ma['undertrained'] is (n < ma['schedule_epochs']/2)
    b = train(flower_data[1], out=tmp_path/'b', size=32, bs=8, pretrained='no', epochs=n)
    assert 'epochs fit' not in capsys.readouterr().out # told: nothing measured
    mb = json.loads((tmp_path/'b'/'metrics.json').read_text())
    assert mb['schedule_epochs'] is None and mb['undertrained'] is False
    wa,wb = a.model.state_dict(),b.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

def test_a_run_fitted_to_far_fewer_epochs_says_it_is_undertrained(flower_data, tmp_path, capsys):
    "1 epoch where the schedule has 24 or 36, exit 0 and a validation MAE: read as a model to use unless the run says what it is"
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--data', flower_data[0], '--out', tmp_path/'run', '--size', '32', '--bs', '8',
                        '--pretrained', 'no', '--minutes', '.05'], capture_output=True, text=True, timeout=600) # seconds: 1 epoch, the least
    assert r.returncode==0, r.stderr
    out,m = r.stdout,json.loads((tmp_path/'run'/'metrics.json').read_text())
    sched = default_schedule(m['precision'])['epochs']
    assert m['epochs']==1 and m['schedule_epochs']==sched and m['undertrained'] is True
    said = re.search(rf"Undertrained: 1 epochs trained in the 0.05 minutes given, under half the schedule's {sched}, .* --epochs {sched} trains them "
                     r"\(about (\d+) minutes? here\)", out)
    assert said and out.index('Validation MAE') < said.start() < out.index('Count photos with it')
    assert 1 <= int(said[1]) <= math.ceil(m['seconds']*sched/60) # the run's seconds with 35 more epochs, each no longer than the whole run
    assert 'about' not in short_note(1, 36, 5, 100) and short_of(17, 36) and not short_of(18, 36)
    # and said again where it counts: whoever counts with the model later sees its counts only
    # the model carries it, wherever it is copied: the safe pair without its run folder, and `export.pkl` for `load_learner`
    (tmp_path/'copy').mkdir()
    for f in ('model.safetensors', 'model.json'): shutil.copy(tmp_path/'run'/f, tmp_path/'copy')
    code,_,err = main_here(capsys, predict_main, tmp_path/'copy', flower_data[0]/'images')
    assert code==0 and f"undertrained, 1 epochs where the schedule has {sched}: it counts worse" in err
    code = f"import json; from fastai.vision.all import load_learner; print(json.dumps(load_learner({str(tmp_path/'run'/'export.pkl')!r}).train_info))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd='/') # as another script loads it
    assert json.loads(r.stdout.strip().splitlines()[-1])==dict(epochs=1, schedule_epochs=sched, undertrained=True), r.stderr
    p = subprocess.Popen([sys.executable, '-m', 'flowers.serve', tmp_path/'run', '--port', '0'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try: said = ''.join(itertools.takewhile(lambda l: 'open http://' not in l, p.stdout)) # what the server says before it listens
    finally: p.terminate(); p.wait(timeout=30)
    assert f"undertrained, 1 epochs where the schedule has {sched}" in said

def test_a_model_trained_its_epochs_is_not_said_to_be_undertrained(trained, flower_data, capsys):
    "A run told its epochs records no schedule, and its counts come with no such note"
    m = json.loads((trained/'metrics.json').read_text())
    assert m['schedule_epochs'] is None and m['undertrained'] is False
    assert json.loads((trained/'model.json').read_text())['train_info']==dict(epochs=m['epochs'], schedule_epochs=None, undertrained=False)
    code,_,err = main_here(capsys, predict_main, trained, flower_data[0]/'images')
    assert code==0 and 'undertrained' not in err

@pytest.mark.parametrize('minutes', [0, -1, float('nan'), float('inf'), True, '5'])
def test_bad_minutes_are_refused(flower_data, tmp_path, minutes):
    with pytest.raises(FlowersError, match='--minutes'): train(flower_data[1], out=tmp_path/'run', size=32, pretrained='no', minutes=minutes)
    assert not (tmp_path/'run').exists()
