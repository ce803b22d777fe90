"""The files a CSV's image names mean: every spelling of a name (Windows, macOS, letter case), full paths, and the images' folder."""
import os, unicodedata
from functools import cache
from pathlib import Path, PureWindowsPath

__all__ = ['IMG_EXTS', 'OTHER_PICTURES', 'is_web_address', 'find_img_dir', 'name_key', 'match_name', 'relative_name', 'match_names']

IMG_EXTS = ('.jpg','.jpeg','.jfif','.jpe','.png','.webp','.tif','.tiff','.bmp','.heic','.heif','.avif') # .jfif: JPEGs saved by browsers on Windows
# pictures flowers does not read (animations, drawings, camera raws): named when a folder holds them, not passed over unsaid
OTHER_PICTURES = ('.gif','.svg','.ico','.psd','.jp2','.jxl','.dng','.cr2','.cr3','.nef','.arw','.orf','.rw2','.raf')

def is_web_address(fn) -> bool:
    "Is image name `fn` a web address (an iNaturalist or gallery export's image column), not a file?"
    return str(fn).lower().startswith(('http://','https://'))

def _is_full(fn) -> bool:
    "Is image name `fn` a full path (a glob's output), not one relative to an image folder?"
    return isinstance(fn, str) and fn.startswith('/')

def _resolved(fn) -> Path:
    "Absolute image path `fn` with its folders' links resolved, as `find_img_dir`'s folder is, but not the file's own"
    p = Path(fn)
    try: return p.parent.resolve()/p.name
    except (OSError, ValueError): return p # a NUL byte: `_path_problem` names it

def find_img_dir(csv, fnames, img_dir=None):
    "Folder the image names in `csv` are relative to: `img_dir`, else `images/` beside the CSV if the files are there, else the CSV's folder; for absolute names only, the folder they share"
    if img_dir is not None: return Path(img_dir).resolve()
    fnames = list(fnames)
    if fnames and all(map(_is_full, fnames)): # a CSV written from a glob of full paths
        return Path(os.path.commonpath([_resolved(f).parent for f in set(fnames)]))
    root = Path(csv).resolve().parent
    sub = root/'images'
    if not sub.is_dir(): return root
    some = list(fnames)[:50]
    def _hits(d): return sum(_is_file(d/match_name(f, d)[0]) for f in some if f)
    return sub.resolve() if _hits(sub) >= _hits(root) else root # resolved: an images/ that is a link still holds its files

def _is_file(p) -> bool:
    "Is `p` a regular file? False, not an exception, for names no file system accepts"
    try: return p.is_file()
    except (OSError, ValueError): return False

def _is_dir(p) -> bool:
    "Is `p` a folder? False for names no file system accepts"
    try: return p.is_dir()
    except (OSError, ValueError): return False

def name_key(fn) -> str:
    "`fn` as the same name in every spelling: `\\` as `/` (a CSV made on Windows), Unicode NFC (macOS stores `é` as `e` + accent)"
    return unicodedata.normalize('NFC', fn.replace('\\', '/'))

def _listing(d) -> dict:
    "Names in folder `d` by their `name_key`"
    try: return {name_key(n):n for n in os.listdir(d)}
    except OSError: return {}

def _near(cur, part, listing):
    "The name in folder `cur` that `part` nearly is, and what differs: letter case, or no extension"
    key = name_key(part)
    for k,n in listing(cur).items():
        if k.casefold()==key.casefold(): return n, "names are case-sensitive here, so write it as it is on disk"
    for k,n in listing(cur).items():
        if k.rpartition('.')[0]==key and Path(n).suffix.lower() in IMG_EXTS: return n, "write the name with its extension"
    return None, None

def match_name(fn, # Image name as a CSV gives it
               img_dir, # Folder it is relative to
               listing=_listing, # `folder -> {name_key: name}`; a cached one where many names are matched
              ) -> tuple:
    "`(name, hint)`: `fn`, else the file it names in another spelling (`name_key`); `hint` says what a near miss is"
    if not fn or '\0' in fn or _is_file(img_dir/fn) or PureWindowsPath(fn).anchor: return fn, None
    cur,out = Path(img_dir),[]
    for part in PureWindowsPath(fn).parts: # split at slashes and backslashes
        found = part if part in ('.','..') or _is_file(cur/part) or _is_dir(cur/part) else listing(cur).get(name_key(part))
        if found is None:
            near,why = _near(cur, part, listing)
            return fn, near and f"{'/'.join(out+[near])!r} is there: {why}"
        cur = cur/found; out.append(found)
    return ('/'.join(out), None) if _is_file(cur) else (fn, None)

def relative_name(fn, # Image name as a CSV gives it
                  img_dir, # Folder the names are relative to (resolved, as `find_img_dir` gives it)
                 ) -> str:
    "An absolute `fn` inside `img_dir` as the name relative to it; any other `fn` as it is"
    if not _is_full(fn) or '\0' in fn: return fn
    try: return _resolved(fn).relative_to(img_dir).as_posix()
    except (ValueError, OSError): return fn

def match_names(fns, img_dir) -> list:
    "`match_name` of each of `fns`, each folder listed once"
    listing = cache(_listing)
    return [match_name(fn, img_dir, listing) for fn in fns]
