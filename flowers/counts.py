"""Reading a counts CSV (and `points.csv` beside it) and checking every row and image, with messages that name them."""
import hashlib, io, math, re, warnings, numpy as np, pandas as pd
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from csv import Error as CSVError
from pathlib import Path
from .errors import FlowersDataError
from .settings import decode_threads, find_csv
from .progress import progress
from .names import * # here too, where code written before the split finds it
from .names import _is_file

__all__ = ['IMG_EXTS', 'OTHER_PICTURES', 'MAX_COUNT', 'is_web_address', 'read_counts', 'same_files', 'find_img_dir', 'name_key', 'match_name', 'relative_name', 'match_names', 'read_heads', 'read_points']

MAX_COUNT = 1_000_000 # counts beyond this are typos, and squared in the loss they overflow float32
_TRUE,_FALSE = {'1','true','yes','y','t','valid'},{'0','false','no','n','f','train',''}

def _encoding(csv):
    "UTF-16 where the file starts with its byte-order mark (Excel's 'Unicode Text'), else UTF-8 with or without one"
    with open(csv, 'rb') as f: bom = f.read(2)
    return 'utf-16' if bom in (b'\xff\xfe', b'\xfe\xff') else 'utf-8-sig'

def _read_csv(csv):
    "Every cell of `csv` under the header's columns as a stripped string, and in `attrs` its `sep` and the `extra` cells past them by line; `,`, `;` or tab separated, UTF-8 (with or without a BOM) or UTF-16"
    enc = _encoding(csv)
    try: text = csv.read_text(encoding=enc)
    except UnicodeError as e: raise FlowersDataError(f"{csv}: not a UTF-8 text file ({e}); save it as CSV (UTF-8)")
    head = text.lstrip().partition('\n')[0]
    if not head: raise FlowersDataError(f"{csv}: the file is empty; it needs a header line such as 'image,count' and one row per image")
    sep = max((',', ';', '\t'), key=head.count) # the first, a comma, when none is found
    # pandas 2's C parser (Python 3.10 gets no pandas 3) ends a cell at a NUL byte, and the row named a file that isn't the one
    # written; its Python parser refuses cells over 128 kB. So a NUL goes through as a character no text holds, and comes back
    nul = '\0' in text
    if nul: text = text.replace('\0', '\uffff')
    # rows may be longer than the header (a separator at the end of every line, a notes cell without a name): read with room
    # for them, pandas took a longer first row's first cells for an index, and its names became counts; a later one stopped it
    width = min(max(line.count(sep) for line in text.splitlines()) + 1, head.count(sep) + 17)
    try: cells = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True, header=None, names=range(width))
    except pd.errors.EmptyDataError: raise FlowersDataError(f"{csv}: the file is empty; it needs a header line such as 'image,count' and one row per image")
    except (pd.errors.ParserError, CSVError) as e: raise FlowersDataError(f"{csv}: not a readable CSV file ({e})") # decoded above: no UnicodeError here
    if nul: cells = cells.map(lambda c: c.replace('\uffff', '\0'))
    cols = [c.strip() for c in cells.iloc[0]]
    while len(cols) > 1 and not cols[-1]: cols.pop() # a separator at the header's end names no column; a header of blanks keeps its first
    dup = sorted({c for c in cols if c and cols.count(c) > 1})
    if dup: raise FlowersDataError(f"{csv}: the column {', '.join(map(repr, dup))} appears more than once in the header; rename or remove the copies")
    df = cells.iloc[1:, :len(cols)].map(str.strip).reset_index(drop=True)
    df.columns = [c or f'Unnamed: {i}' for i,c in enumerate(cols)] # as pandas names them
    more = [[c.strip() for c in row if c.strip()] for row in cells.iloc[1:, len(cols):].itertuples(index=False)]
    df.attrs.update(sep=sep, extra={i+2:row for i,row in enumerate(more) if row})
    return df

def decimal_points(col, # Cells of a count column, as strings
                   sep, # The CSV's column separator
                  ) -> pd.Series:
    "`col` with decimal commas as points where a comma does not separate columns: European spreadsheets write 7,5 for 7.5"
    return col.str.replace(r'^(\d+),(\d+)$', r'\1.\2', regex=True) if sep in (';','\t') else col

def _short(s, n=260):
    "`s` for a message: at most `n` characters"
    # long enough for any real path (Windows' old limit is 260): at 80, a test's own temporary paths came out cut in the middle
    return s if len(s) <= n else f"{s[:n-20]}...{s[-10:]} ({len(s):,} characters)"

def _check_cols(df, csv, fn_col, label_col):
    "Raise if `fn_col` or `label_col` is missing from `df`, suggesting near matches"
    missing = [c for c in (fn_col,label_col) if c not in df.columns]
    if not missing: return
    found = ', '.join(repr(c) for c in df.columns) or 'no named column'
    hints = [f"'{m}' looks like {c!r}" for m in missing for c in df.columns if c.lower()==m.lower()]
    hint = f" ({'; '.join(hints)})" if hints else ''
    raise FlowersDataError(f"{csv}: missing column {' and '.join(repr(m) for m in missing)}; found {found}{hint}. "
                           f"Rename the columns or pass --fn-col/--label-col (fn_col=/label_col=).")

def _path_problem(fn, img_dir, hint=None):
    "Why image name `fn` can't be used under `img_dir`, or None; `hint` (from `match_name`) is said if it is not found"
    if not fn: return "no image name (blank)"
    if is_web_address(fn): return f"image name '{_short(fn)}' is a web address; flowers counts files, so download the images and name the files"
    if '\0' in fn: return f"image name '{_short(fn)}' contains a NUL byte"
    if len(fn) > 4096 or any(len(part.encode()) > 255 for part in Path(fn).parts): return f"image name '{_short(fn)}' is too long for a file name"
    p = Path(fn)
    if p.is_absolute() or fn.startswith(('/','\\')) or (len(fn)>1 and fn[1]==':'):
        return f"image path '{_short(fn)}' is absolute, and not in the image folder {img_dir}; give it relative to that folder, or give every image's full path"
    if not (img_dir/p).resolve().is_relative_to(img_dir):
        return f"image path '{_short(fn)}' points outside the image folder {img_dir}"
    if not _is_file(img_dir/p): return f"image file '{_short(fn)}' not found in {img_dir}" + (f"; {hint}" if hint else '')

def _image_problem(fn, img_dir, size=None):
    "Why image `fn` can't be opened, or None"
    from .images import open_image # torch and fastai: `find_images` and the CLIs' checks need neither
    try: open_image(img_dir/fn, name=fn, size=size)
    except FlowersDataError as e: return str(e)

def _image_problems(fnames, img_dir, skip=(), size=None):
    "`(line, message)` for each image that can't be opened, each opened once (at `size`, as training will), in threads"
    lines = [i+2 for i in range(len(fnames)) if i+2 not in skip]
    with ThreadPoolExecutor(decode_threads()) as ex:
        found = ex.map(partial(_image_problem, img_dir=img_dir, size=size), [fnames.iloc[l-2] for l in lines])
        return [(l,p) for l,p in zip(lines, progress(found, total=len(lines), comment='checking images')) if p]

def _digest(p) -> str:
    "A hash of file `p`'s bytes; '' if it can't be read (its row says why)"
    try: return hashlib.blake2b(Path(p).read_bytes(), digest_size=16).hexdigest()
    except OSError: return ''

def same_files(fnames, # Image names, relative to `img_dir`
               img_dir, # Their folder
              ) -> list:
    "Groups of names in `fnames` whose files hold the same bytes: one photo copied under several names"
    by_size = {}
    for f in fnames: by_size.setdefault(_size(img_dir/f), []).append(f)
    # only files of one size can be copies: the others are not read again after the images' check (a second read of every photo)
    alike = [f for n,fs in by_size.items() if n is not None and len(fs) > 1 for f in fs]
    with ThreadPoolExecutor(decode_threads()) as ex: keys = list(ex.map(_digest, [img_dir/f for f in alike]))
    groups = {}
    for f,k in zip(alike, keys):
        if k: groups.setdefault(k, []).append(f)
    return [g for g in groups.values() if len(g) > 1]

def _size(p) -> int:
    "File `p`'s size in bytes; None if it can't be read (its row says why)"
    try: return Path(p).stat().st_size
    except OSError: return None

def _copies_warning(df, fn_col, label_col, img_dir):
    "Warn of photos copied under several names: copies on both sides of the split make validation look better than it is"
    groups = same_files(df[fn_col], img_dir)
    if not groups: return
    count = dict(zip(df[fn_col], df[label_col]))
    differ = [g for g in groups if len({count[f] for f in g}) > 1]
    eg = ' = '.join(_short(f, 40) for f in (differ or groups)[0][:3])
    warnings.warn(f"{sum(len(g)-1 for g in groups)} image(s) are byte-for-byte copies of others (e.g. {eg})"
                  + (f", {len(differ)} of them with different counts" if differ else '')
                  + ": a copy in training and another in validation makes the validation MAE look better than it is; keep one row per photo")

def _one_count_warning(df, label_col):
    "Warn where every image has the same count: a model learns nothing from them but that number"
    if len(df) > 1 and df[label_col].nunique()==1:
        warnings.warn(f"all {len(df)} images have the count {df[label_col].iloc[0]:g} (column '{label_col}'): a model learns nothing from "
                      f"them but that number; is --label-col (label_col=) the column of counts, and are images with other counts missing?")

def _count_problem(s):
    "Why `s` is not a usable count, or None"
    if s=='': return "no count"
    try: v = float(s)
    except ValueError:
        hint = "; it has a decimal comma: write 7.5, not 7,5 (or save the CSV with ';' between columns)" if re.fullmatch(r'\d+,\d+', s) else ''
        return f"count '{_short(s)}' is not a number{hint}"
    if math.isnan(v): return f"count '{s}' is NaN"
    if math.isinf(v): return f"count '{s}' is infinite"
    if v<0: return f"count {_short(s)} is negative"
    if v > MAX_COUNT: return f"count {_short(s)} is absurdly large (more than {MAX_COUNT:,}); check the column"

def _extra_problem(cells, n, sep):
    "What is wrong with a row of `n` columns that has `cells` beyond them"
    shown = ', '.join(repr(_short(c, 40)) for c in cells[:3]) + (', ...' if len(cells) > 3 else '')
    hint = "a decimal comma (write 7.5) or a name holding a ','? Put such a name in double quotes" if sep==',' else f"a name holding a {sep!r}? Put it in double quotes"
    return f"{len(cells)} more cell{'s'*(len(cells)!=1)} than the header's {n} column{'s'*(n!=1)} ({shown}): {hint}"

def _problem_msg(csv, problems, what):
    "One message listing every `(line, message)` in `problems`"
    n = len(problems)
    lines = '\n'.join(f"  line {l}: {m}" for l,m in problems[:50])
    more = f"\n  ... and {n-50} more" if n>50 else ''
    return f"{csv}: {n} bad row{'s'*(n!=1)}{what}:\n{lines}{more}"

def read_counts(csv, # CSV file with one row per image, or a folder holding `counts.csv` (as `train` takes it)
                img_dir=None, # Folder the image names are relative to (default: `images/` beside the CSV, else the CSV's folder)
                fn_col='image', # Column holding image file names
                label_col='count', # Column holding the counts
                drop_bad=False, # Drop bad rows with a warning instead of raising
                verify=False, # Also open every image once (a pre-flight check before training)
                size=None, # Decode images for this model input size in the check (None: every pixel)
               ) -> pd.DataFrame:
    "Read and check a counts CSV: a clean `DataFrame`, or one `FlowersDataError` listing every problem"
    csv = Path(csv)
    if csv.is_dir(): csv = find_csv(csv) # a data folder, as `train` takes it
    if not csv.is_file(): raise FlowersDataError(f"{csv}: file not found")
    df = _read_csv(csv)
    _check_cols(df, csv, fn_col, label_col)
    if not len(df): raise FlowersDataError(f"{csv}: has a header but no rows; add one row per image ({fn_col},{label_col})")
    img_dir = find_img_dir(csv, df[fn_col], img_dir)
    if not img_dir.is_dir(): raise FlowersDataError(f"{img_dir}: image folder not found")
    df[label_col] = decimal_points(df[label_col], df.attrs['sep'])
    df[fn_col] = [relative_name(fn, img_dir) for fn in df[fn_col]]
    matched = match_names(df[fn_col], img_dir)
    df[fn_col] = [fn for fn,_ in matched]
    problems,extra = [],df.attrs['extra']
    for i,(fn,cnt,(_,hint)) in enumerate(zip(df[fn_col], df[label_col], matched)):
        # its name and count may be cells out of place: the extra cells are the problem to name
        if i+2 in extra: problems.append((i+2, _extra_problem(extra[i+2], len(df.columns), df.attrs['sep']))); continue
        for p in (_path_problem(fn, img_dir, hint), _count_problem(cnt)):
            if p: problems.append((i+2, p))
    if verify: problems += _image_problems(df[fn_col], img_dir, {l for l,_ in problems}, size)
    first = {}
    for i,k in enumerate(str(Path(f)) if f else '' for f in df[fn_col]):
        if k in first and k: problems.append((i+2, f"image '{_short(df[fn_col].iloc[i])}' is listed again (first on line {first[k]})"))
        first.setdefault(k, i+2)
    if 'is_valid' in df.columns:
        for i,v in enumerate(df['is_valid']):
            if v.lower() not in _TRUE|_FALSE: problems.append((i+2, f"is_valid '{v}' is not true/false"))
    problems.sort()
    if problems and not drop_bad:
        raise FlowersDataError(_problem_msg(csv, problems, '') + "\nFix these rows, or pass --drop-bad (drop_bad=True) to skip them.", problems)
    if problems:
        bad = sorted({l for l,_ in problems})
        if len(bad)==len(df): raise FlowersDataError(_problem_msg(csv, problems, '; no usable rows left'), problems)
        warnings.warn(_problem_msg(csv, problems, f', dropped ({len(df)-len(bad)} rows left)'))
        df = df.drop(index=[l-2 for l in bad])
    df = df.reset_index(drop=True)
    df[label_col] = df[label_col].astype('float32')
    if verify: _copies_warning(df, fn_col, label_col, img_dir)
    if verify: _one_count_warning(df, label_col)
    if 'is_valid' in df.columns: df['is_valid'] = df['is_valid'].str.lower().isin(_TRUE)
    df.attrs.update(img_dir=img_dir, csv=csv, dropped=[dict(line=l, problem=m) for l,m in problems])
    return df

def read_heads(df, # A clean counts `DataFrame` from `read_counts`
               fn_col='image', # Column holding image file names
               label_col='count', # Column holding the counts
              ) -> tuple:
    "Head centres from `points.csv` beside the counts CSV, and where it has radii (`r`), a point on each head's rim: two Series of -1..1 coordinates per row of `df`, each None without"
    f = Path(df.attrs['csv']).with_name('points.csv')
    if not f.is_file(): return None,None
    # index_col: a separator at each line's end is not the names as an index; a blank name is '', not a NaN no name matches
    try: pts = pd.read_csv(f, index_col=False, dtype={'image': str}, keep_default_na=False)
    except Exception as e: warnings.warn(f"{f}: not readable ({e}); training from the counts only"); return None,None
    if not {'image','x','y'} <= set(pts.columns):
        warnings.warn(f"{f}: needs the columns image, x and y; training from the counts only"); return None,None
    cols = ['x','y','r'] if 'r' in pts.columns else ['x','y']
    pts[cols] = pts[cols].apply(pd.to_numeric, errors='coerce') # a word where a number should be: not finite, below
    key = {f:name_key(relative_name(f, df.attrs['img_dir'])) for f in pts['image'].astype(str).unique()} # full paths, as its counts CSV may have
    groups = {k:g[cols].to_numpy('float32') for k,g in pts.groupby(pts['image'].astype(str).map(key))}
    empty = np.zeros((0,len(cols)), 'float32')
    heads = [groups.get(name_key(fn), empty) for fn in df[fn_col]]
    bad = [fn for fn,p,c in zip(df[fn_col], heads, df[label_col]) if len(p)!=c or not np.isfinite(p).all()]
    if bad:
        warnings.warn(f"{f}: the points of {len(bad)} images (e.g. {bad[0]}) don't match their counts, or aren't numbers; training from the counts only")
        return None,None
    from .images import image_size
    # a phone's portrait photo is saved on its side with an EXIF turn; annotation tools, and `open_image`, show it upright
    with ThreadPoolExecutor(decode_threads()) as ex: sizes = list(ex.map(image_size, [df.attrs['img_dir']/fn for fn in df[fn_col]]))
    def _series(xys): return pd.Series([xy*2/np.array(sz, 'float32') - 1 for xy,sz in zip(xys, sizes)], index=df.index, dtype=object)
    # a point on the rim moves with the image as the centre does, so that flips, turns and resizing leave the radius right
    return _series(p[:,:2] for p in heads),(_series(p[:,:2] + p[:,2:]*np.array([1,0], 'float32') for p in heads) if 'r' in cols else None)

def read_points(df, # A clean counts `DataFrame` from `read_counts`
                fn_col='image', # Column holding image file names
                label_col='count', # Column holding the counts
               ):
    "Head centres from `points.csv` beside the counts CSV (`image,x,y` in pixels of the image as shown), as -1..1 coordinates per row of `df`; None without one"
    return read_heads(df, fn_col, label_col)[0]
