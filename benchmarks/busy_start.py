"""A no-flag training run on a machine busy as it starts: `--busy` processes spinning beside it until its first timing ends
(its first "timed again" or "epochs fit" line), then gone; or, `--until Training`, until every timing has ended. What the budget made of it: epochs planned, cut or stretched, the
run's time and its validation MAE. Results: `benchmarks/results/busy_start.json` (one row per run, appended)."""
import json, re, subprocess, sys, time
from pathlib import Path
from fastcore.script import call_parse

RESULTS = Path(__file__).parent/'results'/'busy_start.json'
SPIN = 'while True: pass'
FIRST = 'timed again|epochs fit' # the first timing's end

def busy_run(out, # Run folder for `flowers.train --out`
             busy=2, # Processes spinning from the run's start until a line matches `until`
             args=(), # More arguments for `flowers.train`
             until=FIRST, # A regex: the first line of the run matching it stops the spinning processes
            ) -> dict:
    "Train with `busy` spinning processes beside the run's start; its budget lines, seconds and validation MAE"
    spin = [subprocess.Popen([sys.executable, '-c', SPIN]) for _ in range(busy)]
    t,lines = time.time(),[]
    try:
        p = subprocess.Popen([sys.executable, '-m', 'flowers.train', '--out', str(out), '--overwrite', *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            print(line, end='', flush=True); lines.append(line.rstrip())
            if spin and re.search(until, line):
                for o in spin: o.kill()
                spin,lines[-1] = [],lines[-1] + f'  [the {busy} busy processes stopped at {time.time()-t:.0f} s]'
        rc = p.wait()
    finally:
        for o in spin: o.kill()
    mae = [float(m[1]) for l in lines if (m := re.search(r'Validation MAE ([\d.]+)', l))]
    said = [l for l in lines if re.search(r'timed again|epochs fit|compressed into|stretched over|busy processes stopped', l)]
    return dict(busy=busy, until=until, args=list(args), rc=rc, seconds=round(time.time()-t, 1), mae=mae[-1] if mae else None, budget=said)

@call_parse
def main(out:str='models/busy', # Run folder (replaced)
         busy:int=2, # Processes spinning beside the run's start
         until:str=FIRST, # A regex: the first line of the run matching it stops them ('Training': after every timing)
        ):
    "Measure a no-flag run on a machine busy as it starts; append the row to `benchmarks/results/busy_start.json`"
    r = busy_run(Path(out), busy, until=until)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(rows + [dict(r, date=time.strftime('%Y-%m-%d %H:%M'))], indent=1))
    print(json.dumps(r, indent=1))
