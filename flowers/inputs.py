"""What `flowers.predict` is given to count: image files, folders and CSVs of image names, shards of them, and the true counts the CSVs carry."""
import json, os, re, warnings, numpy as np, pandas as pd
from pathlib import Path, PureWindowsPath
from .errors import FlowersError
from .atomic import undefused
from .settings import FORMAT, STATE, CHECKPOINT, RUN_PLOTS
from .counts import _read_csv, decimal_points
from .names import IMG_EXTS, OTHER_PICTURES, find_img_dir, match_names, is_web_address

__all__ = ['MAPS_MARK', 'take_shard', 'image_files', 'csv_images', 'find_images', 'true_counts']

def take_shard(items:list, # Images in a stable order (as `find_images` gives them)
               shard:str, # 'K/N': the K-th of N parts, K counted from 0 (as Slurm array and Kubernetes job indexes are)
              ) -> list:
    "Every N-th item from the K-th on: N jobs given K = 0..N-1 count every item exactly once"
    try: k,n = map(int, str(shard).split('/'))
    except ValueError: k = n = None
    if n is None or not 0 <= k < n: raise FlowersError(f"--shard {shard}: must be K/N with 0 <= K < N, e.g. 0/4 .. 3/4 for four jobs")
    return items[k::n]

# left in a --maps folder: a later run given the folder of photos around it once counted its map pictures as photos too
MAPS_MARK = '.flowers-maps'

def _not_photos(root, files) -> tuple:
    "The pictures among `files` of folder `root` that flowers wrote (a run's plots, `--maps` pictures), and what they are"
    if MAPS_MARK in files: return {f for f in files if re.fullmatch(r'\d{5,}-.*\.png', f)},'count-map pictures of an earlier run (--maps)'
    run = STATE in files and CHECKPOINT in files
    if not run and 'model.json' in files:
        with open(Path(root)/'model.json', 'rb') as f: run = FORMAT.encode() in f.read(200)
    return (set(RUN_PLOTS) & set(files),"a training run's plots") if run else (set(),'')

def image_files(folder) -> tuple:
    "Image files under `folder` (links to folders followed), sorted, and the pictures there it can't read; names starting with '.' skipped, as fastai's `get_image_files` does (macOS's `._IMG_1.jpg` copies, `.thumbnails/`), and the pictures flowers wrote"
    found,other,seen = [],[],set()
    # links to folders are followed, as fastai's `get_files` does (photos/2024 -> a share's folder was passed over unsaid), each folder once: a link to a folder above it is no endless loop
    for root,dirs,files in os.walk(folder, followlinks=True):
        if (real := os.path.realpath(root)) in seen: dirs[:] = []; continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        ours,what = _not_photos(root, files)
        if ours: warnings.warn(f"left out {len(ours)} picture(s) in {root}: {what}, not photos")
        files = [Path(root)/f for f in files if not f.startswith('.') and f not in ours]
        found += [p for p in files if p.suffix.lower() in IMG_EXTS]
        other += [p for p in files if p.suffix.lower() in OTHER_PICTURES]
    return sorted(p for p in found if p.is_file()),sorted(other)

def _is_csv(inp): return inp.suffix.lower()=='.csv' and inp.is_file()

def csv_images(csv, # A CSV with an `image` column (else its first), and maybe a column of true counts
               label_cols=('count',), # Columns that may hold true counts: the first the CSV has
              ) -> tuple:
    "The image paths `csv` names, and their true counts (NaN where a cell is no count; None without a column of them)"
    df = _read_csv(csv)
    col = 'image' if 'image' in df.columns else df.columns[0]
    ours = 'error' in df.columns and bool({'unusual','predicted'} & set(df.columns)) # this command's table, or a run's predictions.csv
    if ours: df[col] = df[col].map(undefused) # written with a name such as =x.jpg defused as '=x.jpg
    root = _run_images(csv) or find_img_dir(csv, df[col])
    # a CSV made on Windows or a Mac names them as they are; a web address, or a Windows drive's path elsewhere, is kept as written, to be named as it is
    paths = [f if is_web_address(f) or PureWindowsPath(f).drive else root/f for f,_ in match_names(df[col], root)]
    label = next((c for c in label_cols if c in df.columns and c!=col), None)
    # a table this command wrote, given back to count again: its counts are a model's, and scoring them said 'MAE 0.00'
    if label=='count' and ours and 'predicted' not in df.columns:
        warnings.warn(f"{csv}: a table of counts flowers.predict wrote; its counts are a model's, not true counts, so they are not scored")
        label = None
    if label is None: return paths,None
    counts = pd.to_numeric(decimal_points(df[label], df.attrs['sep']), errors='coerce').to_numpy('float64', copy=True)
    counts[[l-2 for l in df.attrs['extra']]] = np.nan # cells past the header: '7,5' is no count of 7
    return paths,counts

def _run_images(csv):
    "The training images' folder, for a run's own predictions.csv, whose names are that folder's; else None"
    csv = Path(csv)
    if csv.name!='predictions.csv' or (csv.parent/'images').is_dir(): return None # copied beside its images: found as any CSV's
    try: d = json.loads((csv.parent/'metrics.json').read_text())['img_dir']
    except (OSError, ValueError, KeyError, TypeError): return None # not a run, or one from before metrics.json said where its images were
    return Path(d) if d and Path(d).is_dir() else None

def find_images(inputs) -> tuple:
    "Image paths from files, folders (searched recursively) and CSVs with an image column; and usage errors"
    items,errors,other = [],[],[]
    for inp in map(Path, inputs):
        if inp.is_dir():
            found,unread = image_files(inp)
            items += found; other += unread
        elif _is_csv(inp): items += csv_images(inp, ())[0]
        elif inp.exists(): items.append(inp) # a pipe or device too: its row then says it is not a regular file
        else: errors.append(f"{inp}: no such file or folder")
    if other: warnings.warn(f"left out {len(other)} picture(s) of a format flowers does not read ({', '.join(map(str, other[:3]))}{', ...' if len(other)>3 else ''}): "
                            "save them as JPEG or PNG to count them")
    return items,errors

def true_counts(inputs, # What `find_images` was given
                label_cols=('count',), # Columns that may hold true counts in the CSVs: the first each has
               ) -> dict:
    "`{str(path): count}` from the CSVs among `inputs` that have a column of counts"
    found = {}
    for csv in filter(_is_csv, map(Path, inputs)):
        paths,counts = csv_images(csv, label_cols)
        if counts is not None: found.update((str(p),c) for p,c in zip(paths, counts) if np.isfinite(c) and c>=0)
    return found
