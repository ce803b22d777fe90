"""A counting web page and JSON API: `python -m flowers.serve MODEL` (see `--help`)."""
import base64, errno, io, math, socket, sys, threading
from pathlib import Path
from fastcore.script import call_parse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from .errors import FlowersError, check_int, user_errors
from .images import image_format, image_pixels, open_image
from .predict import load_counter, predict_table, undertrained_note
from .report import map_png

__all__ = ['MB', 'MP', 'create_app', 'listen', 'serve']

MB,MP = 1024*1024,1_000_000
MAP_SIDE = 256 # pixels on the longest side of a count map sent to the page: it is smooth, and is stretched over the photo
PAGE = (Path(__file__).parent/'page.html').read_text()
SHOWN = ('JPEG','MPO','PNG','WEBP','BMP','AVIF') # what browsers show in an <img> (MPO: a phone's JPEG): a TIFF (a microscope's) or HEIC (an iPhone's) gets a preview
PREVIEW_SIDE = 1024 # pixels on the longest side of a preview

def _error(status, msg): return JSONResponse({'error': msg}, status_code=status)

class _TooLarge(MultiPartException):
    "A request, or one file in it, over its limit: found while it streams in"

class _LimitedParser(MultiPartParser):
    "Starlette's multipart parser, stopping a file at `max_file` bytes as it arrives (Starlette's own limit skips files)"
    def __init__(self, *args, max_file, **kwargs): super().__init__(*args, **kwargs); self.max_file = max_file
    def on_part_begin(self): super().on_part_begin(); self._size = 0
    def on_part_data(self, data, start, end):
        self._size += end-start
        if self._size > self.max_file: raise _TooLarge(f'each image may be at most {self.max_file/MB:g} MB')
        super().on_part_data(data, start, end)

async def _limited(stream, limit):
    "`stream`'s chunks until more than `limit` bytes came: a chunked request has no Content-Length to check first"
    n = 0
    async for chunk in stream:
        n += len(chunk)
        if n > limit: raise _TooLarge(f'request is over {limit/MB:g} MB; the limit is {limit/MB:g} MB')
        yield chunk

def _pixel_budget(blobs, max_mp, request_mp) -> dict:
    "Error messages for the images over `max_mp` megapixels each, or past `request_mp` for the request, read from headers only"
    errors,total = {},0
    for i,(name,b) in enumerate(blobs):
        px = image_pixels(b)
        if px > max_mp*MP: errors[i] = f'{name}: {px/MP:.0f} megapixels; the limit is {max_mp:g} per image, resize it'
        elif total+px > request_mp*MP: errors[i] = f'{name}: over this request\'s budget of {request_mp:g} megapixels; send it in another request'
        else: total += px
    return errors

def _row(r) -> dict:
    "One `predict_table` row as the API answers it: the error alone, or the count with its interval and unusual flag when known"
    if r['error']: return dict(image=r['image'], error=r['error'])
    out = dict(image=r['image'], count=float(r['count']))
    # too few validation images for the level leave the top open: JSON has no infinity, so it says null; counts by windows have none
    if 'low' in r and not math.isnan(r['low']): out.update(low=float(r['low']), high=float(r['high']) if math.isfinite(r['high']) else None)
    if 'unusual' in r: out.update(unusual=bool(r['unusual']), note=r['note'])
    return out

def _map_url(cmap) -> str:
    "A count map as a data URL of a translucent PNG, to lay over the photo"
    return 'data:image/png;base64,' + base64.b64encode(map_png(cmap)).decode()

def _preview_url(blob) -> str:
    "The image as it was counted (upright), as a JPEG data URL of at most `PREVIEW_SIDE` pixels a side"
    img = open_image(blob)
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    b = io.BytesIO(); img.save(b, 'JPEG', quality=85)
    return 'data:image/jpeg;base64,' + base64.b64encode(b.getvalue()).decode()

def create_app(counter, # A `Counter`, loaded once
               max_upload_mb=20., # Largest single image
               max_request_mb=100., # Largest request (all its images)
               max_files=64, # Most images in one request
               max_megapixels=64., # Largest single image in pixels: decoding costs memory and time by pixels, not bytes
               max_request_megapixels=256., # Most pixels in one request
              ) -> Starlette:
    "The Starlette app: the page at /, `POST /api/count` (`?maps=1` adds each image's count map; `?tile=auto` or `=PX` counts by windows), `GET /health`"
    lock = threading.Lock() # one batch at a time: the model already uses every core
    has_maps = counter.stride is not None # a count-map model; fastai's pooled head makes none

    def _count(blobs, maps=False, tile=None):
        refused = _pixel_budget(blobs, max_megapixels, max_request_megapixels)
        ok = [i for i in range(len(blobs)) if i not in refused]
        level = 0.9 if counter.calibration is not None else None
        with lock:
            df = predict_table(counter, [blobs[i][1] for i in ok], names=[blobs[i][0] for i in ok], show_progress=False, level=level, tile=tile)
            rows = {i:_row(r) for i,r in zip(ok, df.to_dict('records'))}
            if tile is not None: # what it was counted by: the page and a client's table say so
                px = counter.tile_px(tile)
                for r in rows.values():
                    if 'count' in r: r['tile'] = px
            if maps and has_maps:
                for i,r in rows.items():
                    if 'count' in r: r['map'] = _map_url(counter.count_map(blobs[i][1], tile=tile, max_side=MAP_SIDE))
        for i,r in rows.items():
            if 'count' in r and image_format(blobs[i][1]) not in SHOWN: r['preview'] = _preview_url(blobs[i][1])
        rows.update({i:dict(image=blobs[i][0], error=e) for i,e in refused.items()})
        return [rows[i] for i in range(len(blobs))]

    async def _form(request):
        "The multipart form, read with every limit applied as it streams in"
        try: size = int(request.headers.get('content-length') or 0)
        except ValueError: size = 0
        if size > max_request_mb*MB: raise _TooLarge(f'request is {size/MB:.1f} MB; the limit is {max_request_mb:g} MB')
        ctype,_ = parse_options_header(request.headers.get('content-type') or '')
        if ctype!=b'multipart/form-data': raise MultiPartException('expected a multipart form with image files in the field "files"')
        parser = _LimitedParser(request.headers, _limited(request.stream(), max_request_mb*MB), max_files=max_files,
                                max_file=max_upload_mb*MB, max_part_size=MB)
        return await parser.parse()

    async def count(request:Request):
        # a photo of a whole bed, squeezed into one input, shows heads far smaller than any learnt: counted by windows at the training scale
        tile = request.query_params.get('tile') or None
        if tile is not None:
            try: counter.tile_px(tile); counter._need_map()
            except FlowersError as e: return _error(400, str(e).replace('--tile', 'tile', 1))
        try: form = await _form(request)
        except _TooLarge as e: return _error(413, e.message)
        except MultiPartException as e: return _error(400, e.message)
        files = [f for f in form.getlist('files') if hasattr(f, 'read')]
        if not files:
            await form.close()
            return _error(400, 'no files: send images as multipart form field "files"')
        blobs = [(f.filename or f'file{i}', await f.read()) for i,f in enumerate(files)]
        await form.close()
        rows = await run_in_threadpool(_count, blobs, request.query_params.get('maps', '') in ('1','true','yes'), tile)
        if all('error' in r for r in rows):
            return JSONResponse({'error': 'no readable image: ' + '; '.join(r['error'] for r in rows), 'results': rows}, status_code=415)
        return JSONResponse(rows)

    async def health(request): return JSONResponse({'status': 'ok', 'model': repr(counter), 'train_info': counter.train_info}) # a service can check it is not undertrained
    async def page(request): return HTMLResponse(PAGE)
    return Starlette(routes=[Route('/', page), Route('/api/count', count, methods=['POST']), Route('/health', health)])

def listen(host, # Address to listen on
           port, # Port; 0 lets the system pick a free one
          ) -> socket.socket:
    "A socket listening on `host`:`port`, opened before the model loads: a port in use or an unknown host is one clear error, at once"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0] # IPv4 or IPv6, as `host` is written
        return socket.create_server((host, port), family=family)
    except (OSError, UnicodeError) as e:
        fix = ("pick another --port (0 lets the system choose)" if getattr(e, 'errno', None) in (errno.EADDRINUSE, errno.EACCES)
               else "check --host (127.0.0.1, the default, serves this machine only)")
        raise FlowersError(f"--host {host} --port {port}: can't listen there ({getattr(e, 'strerror', None) or e}); {fix}") from None

def serve(model, # Run folder, model.safetensors or export.pkl (the safe format is preferred)
          host='127.0.0.1', # Address to listen on; loopback by default
          port=8000, # Port; 0 lets the system pick a free one (the printed address says which)
          max_upload_mb=20., # Largest single image in MB
          max_request_mb=100., # Largest request in MB
          max_megapixels=64., # Largest single image in megapixels
          max_request_megapixels=256., # Most megapixels in one request
         ):
    "Load `model` once and serve the page and API until stopped"
    import uvicorn
    check_int('--port', port, 0, hi=65535)
    for k,v in dict(max_upload_mb=max_upload_mb, max_request_mb=max_request_mb, max_megapixels=max_megapixels,
                    max_request_megapixels=max_request_megapixels).items():
        if not v > 0: raise FlowersError(f"--{k.replace('_','-')} {v}: must be above 0")
    with listen(host, port) as sock: # closed again if the model fails to load, as when the server stops
        counter = load_counter(model)
        if note := undertrained_note(counter, model): print(note, file=sys.stderr, flush=True) # its counts go to people who see them only
        port = sock.getsockname()[1] # the one the system picked, for port 0
        print(f"Counting with {counter}; open http://{f'[{host}]' if ':' in host else host}:{port}/", flush=True)
        app = create_app(counter, max_upload_mb, max_request_mb, max_megapixels=max_megapixels, max_request_megapixels=max_request_megapixels)
        uvicorn.Server(uvicorn.Config(app, log_level='warning')).run(sockets=[sock])

if __name__=='__main__': sys.argv[0] = 'python -m flowers.serve' # the usage line argparse prints

@call_parse
def main(model:str, # Run folder, model.safetensors or export.pkl (the safe format is preferred)
         host:str='127.0.0.1', # Address to listen on; loopback by default
         port:int=8000, # Port; 0 lets the system pick a free one (the printed address says which)
         max_upload_mb:float=20., # Largest single image in MB (inf: no limit, as for each limit here)
         max_request_mb:float=100., # Largest request in MB
         max_megapixels:float=64., # Largest single image in megapixels (decoding costs memory by pixels, not bytes)
         max_request_megapixels:float=256., # Most megapixels in one request
        ):
    "Serve a page where photos are dropped and counted, and a JSON API"
    with user_errors(): serve(model, host, port, max_upload_mb, max_request_mb, max_megapixels, max_request_megapixels)
