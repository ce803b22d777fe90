"""One robust image opener for training, prediction and the web service."""
import io, warnings, numpy as np
from pathlib import Path
from PIL import Image, ImageOps, UnidentifiedImageError
from fastai.vision.all import PILImage
from .errors import FlowersDataError

__all__ = ['FORMATS', 'MIN_SIZE', 'BACKGROUND', 'open_image', 'to_rgb8']

FORMATS = ('JPEG','PNG','WEBP','TIFF','BMP') # real raster photos; GIF, SVG, PDF, ... are refused whatever the extension
MIN_SIZE = 8 # pixels per side; smaller images can't show anything countable
BACKGROUND = (255,255,255) # what transparent pixels are composited on

def _name(src):
    "How to name `src` in a message"
    return str(src) if isinstance(src, (str, Path)) else getattr(src, 'name', None) or f'<{type(src).__name__}>'

def _scale16(a):
    "16-bit (or wider) integer or float pixel values scaled to 0..255, not clipped"
    if a.dtype.kind=='f': hi = 1. if a.max()<=1. else float(a.max())
    else: hi = 65535. if a.max()>255 else 255.
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

def _open(src, name):
    "A decoded PIL image from a path, bytes or file object; refuses non-raster formats"
    if isinstance(src, (str, Path)):
        p = Path(src)
        if not p.is_file(): raise FlowersDataError(f"{name}: image file not found")
        if p.stat().st_size==0: raise FlowersDataError(f"{name}: empty file (0 bytes)")
    elif isinstance(src, (bytes, bytearray)):
        if not src: raise FlowersDataError(f"{name}: empty image data (0 bytes)")
        src = io.BytesIO(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            img = Image.open(src, formats=FORMATS)
            img.load() # decode now: a truncated file fails here, not mid-batch
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FlowersDataError(f"{name}: image is too large to open safely ({e}); resize it below {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise FlowersDataError(f"{name}: not a supported image (use {', '.join(FORMATS)}; the file's contents decide, not its extension)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise FlowersDataError(f"{name}: broken image file ({e}); re-export or replace it") from None
    return img

def open_image(src:Path|str|bytes|np.ndarray|Image.Image|io.IOBase, # Path, bytes, file object, `PIL.Image`, or HxWxC array
               name=None, # How to name it in error messages (default: the path)
              ) -> PILImage:
    "An 8-bit RGB `PILImage` from any image a user may have, or one `FlowersDataError` naming it"
    name = name or _name(src)
    if isinstance(src, np.ndarray):
        try: img = Image.fromarray(src if src.dtype==np.uint8 else _scale16(src))
        except (TypeError, ValueError) as e: raise FlowersDataError(f"{name}: not an image array ({e})") from None
    elif isinstance(src, Image.Image): img = src
    else: img = _open(src, name)
    try: img = to_rgb8(img)
    except (OSError, ValueError) as e: raise FlowersDataError(f"{name}: can't convert image to RGB ({e})") from None
    if min(img.size) < MIN_SIZE: raise FlowersDataError(f"{name}: image is only {img.size[0]}x{img.size[1]} pixels; too small to count anything in")
    return PILImage(img)
