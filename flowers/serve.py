"""A counting web page and JSON API: `python -m flowers.serve MODEL` (see `--help`)."""
import threading
from pathlib import Path
from fastcore.script import call_parse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.formparsers import MultiPartException
from .errors import user_errors
from .predict import load_counter, predict_table

__all__ = ['MB', 'create_app', 'serve']

MB = 1024*1024
PAGE = (Path(__file__).parent/'page.html').read_text()

def _error(status, msg): return JSONResponse({'error': msg}, status_code=status)

def create_app(counter, # A `Counter`, loaded once
               max_upload_mb=20., # Largest single image
               max_request_mb=100., # Largest request (all its images)
               max_files=64, # Most images in one request
              ) -> Starlette:
    "The Starlette app: the page at /, `POST /api/count`, `GET /health`"
    lock = threading.Lock() # one batch at a time: the model already uses every core

    def _count(blobs):
        with lock: df = predict_table(counter, [b for _,b in blobs], names=[n for n,_ in blobs], show_progress=False)
        return [dict(image=r.image, error=r.error) if r.error else dict(image=r.image, count=float(r.count)) for r in df.itertuples()]

    async def count(request:Request):
        size = int(request.headers.get('content-length') or 0)
        if size > max_request_mb*MB: return _error(413, f'request is {size/MB:.1f} MB; the limit is {max_request_mb:g} MB')
        try: form = await request.form(max_files=max_files, max_part_size=int(max_upload_mb*MB))
        except MultiPartException as e:
            msg = str(e.message if hasattr(e, 'message') else e)
            big = 'size' in msg.lower() or 'exceed' in msg.lower()
            return _error(413 if big else 400, f'{msg}; each image may be at most {max_upload_mb:g} MB' if big else msg)
        except Exception as e: return _error(400, f'expected a multipart form with image files in the field "files" ({e})')
        files = [f for f in form.getlist('files') if hasattr(f, 'read')]
        if not files: return _error(400, 'no files: send images as multipart form field "files"')
        blobs = [(f.filename or f'file{i}', await f.read()) for i,f in enumerate(files)]
        await form.close()
        if any(len(b) > max_upload_mb*MB for _,b in blobs): return _error(413, f'each image may be at most {max_upload_mb:g} MB')
        rows = await run_in_threadpool(_count, blobs)
        if all('error' in r for r in rows):
            return JSONResponse({'error': 'no readable image: ' + '; '.join(r['error'] for r in rows), 'results': rows}, status_code=415)
        return JSONResponse(rows)

    async def health(request): return JSONResponse({'status': 'ok', 'model': repr(counter)})
    async def page(request): return HTMLResponse(PAGE)
    return Starlette(routes=[Route('/', page), Route('/api/count', count, methods=['POST']), Route('/health', health)])

def serve(model, # Run folder, model.safetensors or export.pkl (the safe format is preferred)
          host='127.0.0.1', # Address to listen on; loopback by default
          port=8000, # Port
          max_upload_mb=20., # Largest single image in MB
          max_request_mb=100., # Largest request in MB
         ):
    "Load `model` once and serve the page and API until stopped"
    import uvicorn
    counter = load_counter(model)
    print(f'Counting with {counter}; open http://{host}:{port}/', flush=True)
    uvicorn.run(create_app(counter, max_upload_mb, max_request_mb), host=host, port=port, log_level='warning')

@call_parse
def main(model:str, # Run folder, model.safetensors or export.pkl (the safe format is preferred)
         host:str='127.0.0.1', # Address to listen on; loopback by default
         port:int=8000, # Port
         max_upload_mb:float=20., # Largest single image in MB
         max_request_mb:float=100., # Largest request in MB
        ):
    "Serve a page where photos are dropped and counted, and a JSON API"
    with user_errors(): serve(model, host, port, max_upload_mb, max_request_mb)
