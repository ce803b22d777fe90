"""One robust image opener for training, prediction and the web service."""
import io, re, threading, warnings, numpy as np, torch
from contextlib import contextmanager
from pathlib import Path
from PIL import Image, ImageOps, UnidentifiedImageError, features
from pillow_heif import register_heif_opener
from fastai.vision.all import PILImage, Transform
from .errors import FlowersDataError
from .settings import MIN_SIZE, decode_threads
from .names import is_web_address

__all__ = ['FORMATS', 'MIN_SIZE', 'BACKGROUND', 'open_image', 'OpenImage', 'shrink', 'to_rgb8', 'image_pixels', 'image_format', 'image_size', 'fit_size', 'decode_threads']

register_heif_opener() # an iPhone saves its photos as HEIC; libheif turns them upright, and leaves EXIF's orientation at 1
# real raster photos; GIF, SVG, PDF, ... are refused whatever the extension
FORMATS = ('JPEG','PNG','WEBP','TIFF','BMP','HEIF') + (('AVIF',) if features.check('avif') else ())
BACKGROUND = (255,255,255) # what transparent pixels are composited on

# `catch_warnings` swaps the whole process's filters: two threads in it at once can leave one's behind (an 'ignore all' from
# a header read in `read_points`' threads silenced every later warning of a training run), so threads take turns
_WARNINGS = threading.Lock()

@contextmanager
def _pil_warnings(quiet=False): # Ignore PIL's warnings (a header read for a size: `open_image` will say what is wrong)
    "Inside: PIL's decompression-bomb warning is an error, or with `quiet` PIL's warnings are ignored; one thread at a time"
    with _WARNINGS, warnings.catch_warnings():
        if quiet: warnings.filterwarnings('ignore', module='PIL')
        warnings.filterwarnings('ignore' if quiet else 'error', category=Image.DecompressionBombWarning)
        yield

def _name(src):
    "How to name `src` in a message"
    return str(src) if isinstance(src, (str, Path)) else getattr(src, 'name', None) or f'<{type(src).__name__}>'

def _full_scale(top:int) -> int:
    "The largest value of the fewest bits, 8, 10, 12, 14, 16 or more, that hold `top`"
    # scientific cameras save 10, 12 or 14 bits in a 16-bit file: a 12-bit micrograph scaled by 65535 came out nearly black
    # (at most 16 of 255), and a count of a black image came back silently
    bits = max(8, top.bit_length())
    return 2**(bits + bits%2) - 1

def _scale16(a):
    "16-bit (or wider) integer or float pixel values scaled to 0..255, integers by their bit depth (`_full_scale`), not clipped"
    if a.dtype.kind=='b': return a.astype(np.uint8)*255
    if a.dtype.kind not in 'uif': raise ValueError(f"pixels of type {a.dtype} are not numbers")
    # a NaN or inf would scale every other pixel to black, and the count of a black image would come back silently
    if a.dtype.kind=='f' and not np.isfinite(a).all(): raise ValueError("it has NaN or infinite pixel values")
    if a.dtype.kind=='f': hi = 1. if a.max()<=1. else float(a.max())
    else: hi = float(_full_scale(int(a.max())))
    return np.clip(a.astype(np.float64)*255./hi + 0.5, 0, 255).astype(np.uint8)

def to_rgb8(img:Image.Image) -> Image.Image:
    "`img` as 8-bit RGB: EXIF orientation applied, alpha composited on `BACKGROUND`, 16-bit scaled, CMYK and palettes converted"
    img = ImageOps.exif_transpose(img)
    if img.mode in ('I','I;16','I;16B','I;16L','I;16N','F'): img = Image.fromarray(_scale16(np.asarray(img)), 'L')
    if img.mode=='P': img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode in ('RGBA','LA','PA','RGBa','La'):
        img = img.convert('RGBA')
        bg = Image.new('RGBA', img.size, BACKGROUND+(255,))
        img = Image.alpha_composite(bg, img)
    return img.convert('RGB') if img.mode!='RGB' else img

KINDS = 'a path, bytes, a file object, a PIL image or an HxWxC numpy array'

def _one_picture(img, name):
    "Refuse `img` if it holds several pictures of one size (a stack or an animation), of which only the first would be counted"
    # a phone's JPEG (MPO) carries extra pictures beside the photo, and a pyramid TIFF smaller copies of its first page: those count as it
    n = getattr(img, 'n_frames', 1)
    if n<2 or img.format=='MPO': return
    first = img.size
    img.seek(1); second = img.size; img.seek(0)
    if second==first:
        raise FlowersDataError(f"{name}: holds {n} pictures of {first[0]}x{first[1]} pixels (a z-stack, channels, a time series or an animation?), "
                               f"and one would be counted; save the picture to count (or a projection of the stack) as its own file")

def _deep(img) -> bool:
    "Whether `img` (a PNG's or TIFF's, not yet decoded) holds 16 bits a channel of colour, of which Pillow keeps each value's high byte"
    return img.mode in ('RGB','RGBA') and any(re.search(r';16[BL]\b', str(t.args)) for t in img.tile)

def _swapped(args):
    "A tile's decoder arguments with its rawmode's byte order swapped ('RGB;16B' <-> 'RGB;16L'): its unpacker then keeps the low bytes"
    sw = lambda a: re.sub(r';16([BL])$', lambda m: ';16' + 'LB'[m[1]=='L'], a) if isinstance(a, str) else a
    return sw(args) if isinstance(args, str) else tuple(map(sw, args))

def _all_bits(img, reopen):
    "`img` with both bytes of each 16-bit value, scaled by their bit depth (`_full_scale`); as Pillow decoded it where that fails"
    # a 12-bit colour camera's 16-bit TIFF or PNG came out at most 15 of 255 (the high bytes), and was counted as a black picture
    try:
        with _pil_warnings(quiet=True): low = reopen()
        with low: # a file it opened is closed, also where this fails
            low.tile = [t._replace(args=_swapped(t.args)) for t in low.tile]
            a = np.asarray(img).astype(np.int64)*256 + np.asarray(low)
    except Exception: return img # a source that can't be read twice, or a decoder Pillow has for one byte order only
    rgb8 = (a[..., :3]*255./_full_scale(int(a[..., :3].max())) + .5).astype(np.uint8)
    img.frombytes(np.concatenate([rgb8, (a[..., 3:]/257. + .5).astype(np.uint8)], -1).tobytes()) # alpha is full range
    return img

def _reopener(src):
    "A function that opens `src` again from where it is now; None for a stream that can't go back"
    if isinstance(src, (str, Path)): return lambda: Image.open(src, formats=FORMATS)
    try: start = src.tell()
    except (AttributeError, OSError, ValueError): return None # a pipe: Pillow reads it once, into memory
    def reopen(): src.seek(start); return Image.open(src, formats=FORMATS)
    return reopen

def _open(src, name, size=None):
    "A decoded PIL image from a path, bytes or file object (a JPEG at no less than twice `size`); refuses non-raster formats"
    if isinstance(src, (str, Path)):
        p = Path(src)
        if not p.exists():
            if is_web_address(src): raise FlowersDataError(f"{name}: a web address; flowers counts files, so download the image first")
            if str(src).startswith('~'): raise FlowersDataError(f"{name}: image file not found ('~' is not your home folder here: write the path out, or use Path(...).expanduser())")
            raise FlowersDataError(f"{name}: image file not found")
        if not p.is_file(): raise FlowersDataError(f"{name}: not a regular file (a folder, pipe or device); give an image file")
        if p.stat().st_size==0: raise FlowersDataError(f"{name}: empty file (0 bytes)")
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if not len(src): raise FlowersDataError(f"{name}: empty image data (0 bytes)")
        src = io.BytesIO(bytes(src))
    elif not callable(getattr(src, 'read', None)): raise FlowersDataError(f"{name}: can't read an image from {type(src).__name__}; give {KINDS}")
    try:
        reopen = _reopener(src)
        with _pil_warnings(): img = Image.open(src, formats=FORMATS) # reads the header, where PIL checks the size
        _one_picture(img, name)
        # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale: a 12 MP photo for a 64 px model in a quarter of the time
        if size and img.format in ('JPEG','MPO'): img.draft(img.mode, (2*size, 2*size))
        deep = _deep(img)
        img.load() # decode now, in parallel with other threads: a truncated file fails here, not mid-batch
        if deep and reopen: img = _all_bits(img, reopen)
    except FlowersDataError: raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FlowersDataError(f"{name}: image is too large to open safely ({e}); resize it below {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise FlowersDataError(f"{name}: not a supported image (use {', '.join(FORMATS)}; the file's contents decide, not its extension)") from None
    except Exception as e: # decoders raise anything on crafted headers (TypeError, struct.error, ...): all mean a broken file
        raise FlowersDataError(f"{name}: broken image file ({type(e).__name__}: {str(e)[:200]}); re-export or replace it") from None
    return img

def _array(a, name):
    "A PIL image from an HxW, HxWx1, HxWx3 or HxWx4 array (a CxHxW tensor is moved to channels last)"
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.ndim==3 and a.shape[0] in (1,3,4) and a.shape[-1] not in (1,3,4): a = a.permute(1,2,0) # fastai's TensorImage
        a = a.numpy()
    if a.ndim==3 and a.shape[-1]==1: a = a[...,0]
    if a.ndim not in (2,3) or (a.ndim==3 and a.shape[-1] not in (3,4)):
        raise FlowersDataError(f"{name}: an array of shape {tuple(a.shape)} is not an image; give HxW, HxWx3 or HxWx4")
    try: return Image.fromarray(a if a.dtype==np.uint8 else _scale16(a))
    except (TypeError, ValueError) as e: raise FlowersDataError(f"{name}: not an image array ({e})") from None

def fit_size(wh, # (width, height)
             side:int, # The longer side wanted
            ) -> tuple:
    "`wh` scaled so that its longer side is `side`, each side at least 1"
    return tuple(max(1, round(v*side/max(wh))) for v in wh)

def shrink(img:Image.Image, size:int) -> Image.Image:
    "`img` box-reduced by a whole factor to no less than twice `size` on its shorter side: a cheap first step of a large resize"
    f = min(img.size)//(2*size)
    return img.reduce(f) if f >= 2 else img

def open_image(src:Path|str|bytes|np.ndarray|Image.Image|io.IOBase, # Path, bytes, file object, `PIL.Image`, HxWxC array or CxHxW tensor
               name=None, # How to name it in error messages (default: the path)
               size:int=None, # The model's input size: a file or bytes is decoded and reduced to no less than twice it (None: every pixel)
              ) -> PILImage:
    "An 8-bit RGB `PILImage` from any image a user may have, or one `FlowersDataError` naming it"
    name = name or _name(src)
    if isinstance(src, (np.ndarray, torch.Tensor)): img = _array(src, name)
    elif isinstance(src, Image.Image): img = src
    else: img = _open(src, name, size)
    try: img = to_rgb8(img)
    except Exception as e: # a float TIFF with NaN, bad EXIF, an odd mode: the same one message
        raise FlowersDataError(f"{name}: can't convert image to RGB ({str(e)[:200]})") from None
    if min(img.size) < MIN_SIZE: raise FlowersDataError(f"{name}: image is only {img.size[0]}x{img.size[1]} pixels; too small to count anything in")
    # only what we decode is reduced: a PIL image or array passed in reaches the resize as given, as in fastai's `learn.predict`
    return PILImage(shrink(img, size) if size and not isinstance(src, (np.ndarray, torch.Tensor, Image.Image)) else img)

class OpenImage(Transform):
    "`open_image` as a fastai type transform, decoding at the model's input `size`, so that `learn.predict` sees what `Counter` sees"
    input_types = (Path, str, bytes, bytearray, memoryview, np.ndarray, torch.Tensor, Image.Image, io.IOBase) # what `learn.predict` may be given
    def __init__(self, size:int=None): super().__init__(); self.size = size
    def encodes(self, src): return open_image(src, size=self.size)

def image_pixels(data:bytes) -> int:
    "Width x height from the header of encoded image `data`, without decoding it; 0 if unreadable (`open_image` will say why)"
    try:
        with _pil_warnings(quiet=True), Image.open(io.BytesIO(data), formats=FORMATS) as img: return img.size[0]*img.size[1]
    except Exception: return 0

def image_format(data:bytes) -> str:
    "PIL's name for the format of encoded image `data` ('JPEG', 'TIFF', 'HEIF', ...), from its header; None if unreadable"
    try:
        with _pil_warnings(quiet=True), Image.open(io.BytesIO(data), formats=FORMATS) as img: return img.format
    except Exception: return None

def image_size(src) -> tuple:
    "(width, height) of `src` as `open_image` gives it (EXIF orientation applied), read from the header of a file or bytes"
    if isinstance(src, (str, Path, bytes, bytearray, memoryview)):
        try:
            with _pil_warnings(quiet=True), Image.open(io.BytesIO(bytes(src)) if not isinstance(src, (str, Path)) else src, formats=FORMATS) as img:
                (w,h),turn = img.size,img.getexif().get(0x0112, 1) in (5,6,7,8) # orientations that swap width and height
            return (h,w) if turn else (w,h)
        except Exception: pass # `open_image` says what is wrong with it
    return open_image(src).size
