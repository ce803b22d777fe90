"""Counting many images: `predict_table`, and `python -m flowers.predict`."""
import os, sys, warnings, numpy as np, pandas as pd
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from fastcore.script import call_parse
from .errors import FlowersError, check_int, check_tile, options_first, user_errors, term_interrupts
from .atomic import write_table
from .settings import MIN_SIZE, check_folder, model_file, decode_threads
from .names import IMG_EXTS
# what to count, found here too by scripts written before `flowers.inputs` was split from this module
from .inputs import MAPS_MARK, take_shard, image_files, csv_images, find_images, true_counts
from .progress import progress
# torch and fastai load only once the command line is good (`Counter`): a typo is refused at once, not after ~10 s

__all__ = ['Counter', 'load_counter', 'load_pkl', 'find_images', 'image_files', 'csv_images', 'true_counts', 'add_truth', 'take_shard', 'predict_table', 'show_table', 'tile_note']

def __getattr__(name):
    "`flowers.counter`'s names, here too, where scripts written before the split find them"
    if name not in ('Counter', 'load_counter', 'load_pkl'): raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import counter
    return getattr(counter, name)

def check_csv_out(out) -> Path:
    "Raise unless a CSV can be written to `out`: checked before counting, so no result is lost at the end"
    out = Path(out)
    if out.is_dir(): raise FlowersError(f"--out {out}: is a folder; give a file name such as {out/'counts.csv'}")
    # a spreadsheet app refuses a CSV named .xlsx ("file format or extension is not valid") and the counts look lost
    if out.suffix.lower() not in ('.csv','.txt',''): raise FlowersError(f"--out {out}: the table is written as CSV, which Excel and LibreOffice open; name it {out.with_suffix('.csv')}")
    if out.exists() and not out.is_file(): # a device or pipe (/dev/null, /dev/stdout) is written to as it is, not replaced
        if not os.access(out, os.W_OK): raise FlowersError(f"--out {out}: not writable")
        return out
    if not out.parent.is_dir(): raise FlowersError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)): raise FlowersError(f"--out {out}: not writable")
    return out

NOT_COUNTED = 'not counted: the run was interrupted first'

def add_truth(df, # A table from `predict_table`
              truth, # `{image: true count}` (`true_counts`)
             ) -> str:
    "Add a `true` column to `df` beside `count`; a line saying how far the counts were from the true ones, or '' without any"
    df.insert(df.columns.get_loc('count')+1, 'true', df['image'].map(truth).astype('float64'))
    ok = df['true'].notna() & df['count'].notna()
    if not ok.any(): return ''
    err = df.loc[ok, 'count'] - df.loc[ok, 'true']
    line = f"On the {ok.sum()} images with a true count: MAE {err.abs().mean():.2f}, bias {err.mean():+.2f}"
    odd = ok & df['unusual'].astype(bool) if 'unusual' in df else ok & False
    if odd.sum()==ok.sum(): line += " (all flagged unusual)"
    elif odd.any(): line += f" ({odd.sum()} flagged unusual: MAE {err[odd].abs().mean():.2f}; the others {err[ok & ~odd].abs().mean():.2f})"
    if 'low' in df and df.loc[ok, 'low'].notna().any():
        held = df.loc[ok, 'true'].between(df.loc[ok, 'low'], df.loc[ok, 'high'])
        line += f"; the intervals held {held.sum()} of {df.loc[ok, 'low'].notna().sum()} true counts"
    return line

def predict_table(counter, # A `Counter`
                  items, # Images: paths, or anything `Counter.predict` takes
                  bs=64, # Batch size
                  names=None, # How to name each item (default: the item itself)
                  show_progress=True, # Progress bar for more than one batch
                  level=None, # Add `low`,`high` columns: an interval holding the true count with this probability (e.g. 0.9)
                  tile=None, # Count each image window by window, `tile` of its pixels per model input, or 'auto' (`Counter.predict`)
                  maps=None, # Folder to write each image's count map picture into, as NAME.png
                  unusual=True, # Add `unusual`,`note` columns when the model has a calibration (the images' features cost about 10% of the time)
                  ids=None, # Each image's number in the picture names of `maps` (default 0, 1, ...): shards of one list never reuse one
                  partial=False, # On Ctrl-C (or SIGTERM under `term_interrupts`), return the rows counted so far instead of raising; `df.attrs['interrupted']` says how many were not (None: not stopped)
                 ) -> pd.DataFrame:
    "A row per image, in order: image, count (and interval), whether it is unusual and why, and the error for images that couldn't be read"
    check_int('--bs', bs)
    if tile is not None: tile = counter.tile_px(tile); counter._need_map() # before any image is decoded, as one error, not one per row
    cal = counter.calibration
    flag = unusual and cal is not None
    if level is not None: counter._calibration().quantile(level) # a bad level fails before any image is decoded
    names,ids = [str(o) for o in (names or items)],list(range(len(items)) if ids is None else ids)
    if len(names)!=len(items) or len(ids)!=len(items): # a row would have been named or numbered by another image's, or an IndexError
        raise FlowersError(f"predict_table: {len(items)} items, but {len(names)} names and {len(ids)} ids; give one of each per item")
    by_windows,left = {},None
    if maps: check_folder(maps, '--maps'); (Path(maps)/MAPS_MARK).touch()
    counts,feats,errors,sizes = np.full(len(items), np.nan),{},['']*len(items),{}
    try:
        if tile is None: _whole(counter, items, names, counter.bs_in_memory(max(1, min(bs, len(items)))), flag, show_progress, counts, feats, errors, sizes)
        for j in progress(range(len(items)), show=show_progress and len(items)>1) if tile is not None or maps else ():
            if tile is not None: # each image counted, and flagged, window by window
                try: counts[j],by_windows[j] = _tile_or_map(counter, items[j], names[j], tile, maps, ids[j], flag)
                except FlowersError as e: errors[j] = str(e)
            elif not errors[j]: counts[j],_ = _tile_or_map(counter, items[j], names[j], None, maps, ids[j]) # its map picture
    # an hour of counts stopped by Ctrl-C or a job's time limit were all lost: the rows counted are kept, the others say why they are empty
    except KeyboardInterrupt:
        if not partial: raise
        left = 0 # stopped while drawing the last map pictures, every image may be counted
        for j in np.flatnonzero(np.isnan(counts)):
            if not errors[j]: errors[j] = NOT_COUNTED; left += 1
    df = pd.DataFrame({'image': names, 'count': counts})
    df.attrs['interrupted'] = left
    # the interval's guarantee is for whole images like the validation set: a total of windows, which can pass every training count, has none
    if level is not None: df['low'],df['high'] = cal.interval(counts, level) if tile is None else (np.nan, np.nan)
    if flag:
        ok = sorted(feats)
        flags,notes = cal.unusual(np.stack([feats[j] for j in ok]), counts[ok], [sizes[j] for j in ok]) if ok else ([],[])
        df['unusual'],df['note'] = False,''
        df.loc[ok, 'unusual'],df.loc[ok, 'note'] = flags,notes
        for j,(f,n) in by_windows.items(): df.loc[j, ['unusual', 'note']] = f,n
    df['error'] = errors
    return df

def _whole(counter, items, names, bs, flag, show_progress, counts, feats, errors, sizes):
    "`items` counted whole, `bs` at a time, decoding the next batch meanwhile, into `counts`, `feats` by index (with `flag`), `errors`, `sizes` by index"
    with ThreadPoolExecutor(decode_threads()) as ex:
        decode = lambda i: [ex.submit(counter._tensor_or_error, items[j], names[j]) for j in range(i, min(i+bs, len(items)))]
        ahead = decode(0) if len(items) else []
        for i in progress(range(0, len(items), bs), show=show_progress and len(items)>bs):
            batch,ahead = ahead,(decode(i+bs) if i+bs < len(items) else []) # the next batch decodes while this one is counted
            idx,xs = [],[]
            for j,f in enumerate(batch, i):
                x = f.result()
                if isinstance(x, FlowersError): errors[j] = str(x)
                else: xs.append(x[0]); idx.append(j); sizes[j] = x[1]
            if xs and flag: counts[idx],f = counter._forward(xs, feats=True); feats.update(zip(idx, f))
            elif xs: counts[idx] = counter._forward(xs)

def map_name(j, # The image's number in the whole list
             name, # Its name
            ) -> str:
    "The file name of image `j`'s count map picture: `00042-IMG_0001.png`, within the 255 bytes a file name may have, whatever its letters"
    return f"{j:05d}-{Path(name).stem.encode()[:200].decode(errors='ignore')}.png"

def _tile_or_map(counter, item, name, tile, maps, j, flag=False):
    "The count of `item` (by windows with `tile`), its count map picture written into `maps`; and with `flag` and `tile`, (unusual, note) from its windows"
    why = None
    if tile is not None and flag:
        cells,_,fs,window_counts = counter._tiled_cells(item, tile, feats=True)
        count,why = float(cells.sum()),counter.calibration.unusual_windows(fs, window_counts)
    elif not maps: return counter.predict(item, tile=tile),why
    if maps:
        from .report import save_count_map, PICTURE_SIDE # matplotlib only when pictures are asked for
        from .images import open_image
        cmap = counter.count_map(item, tile=tile, max_side=PICTURE_SIDE)
        save_count_map(open_image(item, name), cmap, Path(maps)/map_name(j, name), f'{Path(name).name}: {cmap.sum():.1f}')
        count = float(cmap.sum())
    return count,why

def _printable(s): return ''.join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s) # a name's newline or escape code, shown as written

def show_table(df, # A table from `predict_table`
              ) -> str:
    "`df` as printed: numbers right-aligned, words left-aligned, and each row's note or error last, unpadded"
    # a phone photo's note (its size, and how to count it by windows) padded every row of pandas' table to ~300 characters: each wrapped
    d = df.drop(columns=[c for c in ('note','error') if c in df])
    why = df['error'].map(lambda e: e and f'error: {e}')
    if 'note' in df: why = why.where(why!='', df['note'])
    if (why!='').any(): d['note'] = why
    cols = []
    for c in d.columns:
        num = pd.api.types.is_float_dtype(d[c])
        cells = [c] + [('' if np.isnan(v) else f'{v:.2f}') if num else _printable(str(v)) for v in d[c]]
        w = max(map(len, cells))
        cols.append([v.rjust(w) if num else v.ljust(w) for v in cells])
    return '\n'.join('  '.join(row).rstrip() for row in zip(*cols))

def tile_note(counter, # A `Counter`
              tile, # `--tile`, as given
             ) -> str:
    "A line saying how far `tile` scales images from the training images' scale, where that is more than 2x; else ''"
    side,tile = counter.train_side,check_tile(tile)
    if side is None or tile=='auto': return ''
    f = side/tile
    if 1/2 <= f <= 2: return ''
    return (f"--tile {tile} counts each image at {f:.2g}x the scale of the training images, which were about {side:.0f} px a side "
            f"(--tile auto): right where heads look {1/f:.2g}x as large as in training, not for photos at the training scale")

def undertrained_note(counter, # A `Counter`
                      name, # What the user called its model
                     ) -> str:
    "A line saying that the model's run trained under half its schedule's epochs (`Counter.train_info`); else ''"
    # said as the run ended, but a model is counted with later, by someone else maybe, who sees its counts only
    t = counter.train_info
    if t.get('undertrained') is not True: return ''
    return (f"{name}: undertrained, {t.get('epochs')} epochs where the schedule has {t.get('schedule_epochs')}: it counts worse "
            f"than a model trained them; train it again with --epochs {t.get('schedule_epochs')}")

FLAGS = ('--fp32',) # the options of `main` that take no value: its bool parameters
if __name__=='__main__': sys.argv = ['python -m flowers.predict', *options_first(sys.argv[1:], flags=FLAGS)] # the usage line argparse prints; options among the files

@call_parse
def main(model:str, # Run folder, model.safetensors or export.pkl
         *inputs:str, # Image files, folders (searched recursively, skipping names that start with '.' and the pictures flowers wrote: --maps pictures, a run's plots) or CSVs with an image column (and a column of counts, named as in training or 'count': their MAE is said)
         out:str=None, # Write the table to this CSV instead of printing it
         bs:int=64, # Batch size
         fp32:bool=False, # Full fp32 precision (bf16 is used where the CPU supports it, within 0.05 heads of fp32)
         shard:str=None, # K/N: count only every N-th image from the K-th (K = 0..N-1), for job arrays; the N parts make the whole table
         interval:float=None, # Add low,high columns: an interval holding the true count with this probability, e.g. 0.9 (none for counts by --tile)
         tile:str=None, # For images larger than the training images: PX of the image's pixels per model input (not a number of tiles), counted window by window, with no upper limit; auto: the training images' size, for photos at their scale; twice the longer side shrinks a close-up to half
         maps:str=None, # Write a picture of each image with its count map (where it counted) into this folder
        ):
    "Count things in images with a trained model"
    with user_errors():
        if not inputs: raise FlowersError("give at least one image, folder or CSV to count")
        check_int('--bs', bs)
        if out: check_csv_out(out)
        if shard: take_shard([], shard)
        if tile is not None: tile = check_tile(tile, MIN_SIZE)
        if tile is not None and interval is not None:
            warnings.warn("--interval with --tile: low and high are left empty; the interval is calibrated on whole images like the validation set, not on totals of windows")
        model_file(model)
        items,missing = find_images(inputs)
        if missing: raise FlowersError('; '.join(missing))
        if not items: raise FlowersError(f"no images found in {', '.join(inputs)} (looked for {', '.join(IMG_EXTS)})")
        if out and Path(out).resolve() in {Path(p).resolve() for p in (*inputs, *items)}: # `--out counts.csv` given counts.csv: the true counts were lost
            raise FlowersError(f"--out {out}: is one of the inputs, and would be overwritten by the counts; give another file name")
        if maps: check_folder(maps, '--maps')
        ids = range(len(items)) # numbers in the whole list, for the map pictures' names: jobs writing into one folder never share one
        if shard: items,ids = take_shard(items, shard),take_shard(ids, shard) # may be empty: more jobs than images still gives every job its (empty) part
        with term_interrupts():
            try:
                from .counter import load_counter
                counter = load_counter(model, precision='fp32' if fp32 else 'auto')
                if maps: counter._need_map()
                # the true counts read with the images, not after counting them: a CSV moved or edited meanwhile lost its scores unsaid
                truth = true_counts(inputs, dict.fromkeys([counter.label_col, 'count'])) # the model's own column, else 'count'
                if tile is not None and (note := tile_note(counter, tile)): print(note, file=sys.stderr)
                if note := undertrained_note(counter, model): print(note, file=sys.stderr)
                df = predict_table(counter, items, bs=bs, level=interval, tile=tile, maps=maps, ids=ids, partial=True)
            except KeyboardInterrupt: print('Interrupted: nothing was written', file=sys.stderr); sys.exit(130)
        scored = add_truth(df, truth) if truth else ''
        if out:
            write_table(df, out) # atomic: a table written over is never left half-written
            print(f'Wrote {len(df)} rows to {out}')
        else: print(show_table(df))
        if scored: print(scored)
        left = df.attrs['interrupted']
        n_bad = int((df['error']!='').sum()) - (left or 0)
        if n_bad: print(f'{n_bad} of {len(df)} images could not be counted (see the error column)', file=sys.stderr)
        n_odd = int(df['unusual'].sum()) if 'unusual' in df else 0
        if n_odd: print(f'{n_odd} of {len(df)} images flagged as unusual (see the note column): their counts may be meaningless', file=sys.stderr)
    if left is not None:
        print(f"Interrupted: {len(df)-left} of {len(df)} images counted" + (f"; the others' error says '{NOT_COUNTED}'" if left else
              f", but not every count-map picture was drawn into {maps}"), file=sys.stderr)
        sys.exit(130)
    if n_bad: sys.exit(1)
