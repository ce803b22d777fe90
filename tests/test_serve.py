"The web page and JSON API, against a real server on 127.0.0.1 in a subprocess."
import base64, io, os, shutil, subprocess, sys, time, pytest, httpx, numpy as np
from PIL import Image
from concurrent.futures import ThreadPoolExecutor
from flowers.predict import load_counter
from flowers.report import map_rgba
from flowers.serve import MAP_SIDE

@pytest.fixture(scope='module')
def server(trained):
    # port 0: the system picks a free one, and the server says which (it used to print port 0)
    p = subprocess.Popen([sys.executable, '-m', 'flowers.serve', str(trained), '--port', '0', '--max-upload-mb', '1'],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if 'open http://' in line: break
    url = line.split('open ')[-1].strip().rstrip('/')
    assert url.startswith('http://127.0.0.1:') and not url.endswith(':0'), line
    for _ in range(300):
        try:
            if httpx.get(url+'/health', timeout=1).status_code==200: break
        except httpx.HTTPError: time.sleep(0.2)
        assert p.poll() is None, p.stdout.read()
    yield url
    p.terminate(); p.wait(timeout=30)

@pytest.fixture(scope='module')
def counter(trained): return load_counter(trained) # the server's own loading: safe format, same precision

def _imgs(flower_data, n): return sorted((flower_data[0]/'images').glob('*.jpg'))[:n]

def _post(url, paths=(), extra=(), maps=False, tile=None):
    files = [('files', (p.name, p.read_bytes(), 'image/jpeg')) for p in paths] + list(extra)
    params = {k:v for k,v in dict(maps='1' if maps else None, tile=tile).items() if v is not None}
    return httpx.post(url+'/api/count', params=params, files=files, timeout=60)

def _mosaic(flower_data, folder):
    "Four training fields side by side, at their own scale: a photo of a larger bed"
    tiles = [Image.open(p).convert('RGB') for p in _imgs(flower_data, 4)]
    w,h = tiles[0].size
    m = Image.new('RGB', (2*w, 2*h))
    for i,t in enumerate(tiles): m.paste(t.resize((w, h)), (w*(i%2), h*(i//2)))
    m.save(folder/'bed.jpg', quality=95)
    return folder/'bed.jpg'

def test_health(server, counter):
    r = httpx.get(server+'/health')
    assert r.json()['status']=='ok' and 'Counter' in r.json()['model']
    assert r.json()['train_info']==counter.train_info and r.json()['train_info']['undertrained'] is False # told its 2 epochs

def test_single_and_multi_counts_match_counter(server, counter, flower_data):
    one = _post(server, _imgs(flower_data, 1))
    assert one.status_code==200 and one.json()[0]['image']=='00000.jpg'
    assert abs(one.json()[0]['count'] - counter.predict(_imgs(flower_data, 1)[0])) < 1e-4
    paths = _imgs(flower_data, 6)
    many = _post(server, paths).json()
    assert [r['image'] for r in many]==[p.name for p in paths]
    assert np.allclose([r['count'] for r in many], [counter.predict(p) for p in paths], atol=1e-4)

def test_maps_only_when_asked_and_they_are_the_counters(server, counter, flower_data):
    paths = _imgs(flower_data, 2)
    assert all('map' not in r for r in _post(server, paths).json())
    for r,p in zip(_post(server, paths, maps=True).json(), paths):
        head,data = r['map'].split(',', 1)
        assert head=='data:image/png;base64'
        png = Image.open(io.BytesIO(base64.b64decode(data)))
        m = counter.count_map(p, max_side=MAP_SIDE)
        assert png.mode=='RGBA' and png.size==(m.shape[1], m.shape[0])==Image.open(p).size
        assert np.abs(np.asarray(png)[...,3] - 255*map_rgba(m)[...,3]).max() <= 1 # opacity follows this image's own map

def test_counts_by_windows_when_asked(server, counter, flower_data, tmp_path):
    "`?tile=auto` counts as `Counter.predict(tile='auto')` does, maps too; with no interval, whose guarantee is for whole images"
    bed = _mosaic(flower_data, tmp_path)
    whole,r = _post(server, [bed]).json()[0],_post(server, [bed], maps=True, tile='auto')
    assert r.status_code==200 and 'low' in whole
    row = r.json()[0]
    assert row['count']==pytest.approx(counter.predict(bed, tile='auto'), abs=1e-4) and 'low' not in row and 'high' not in row
    assert row['tile']==counter.tile_px('auto') and 'tile' not in whole
    m = counter.count_map(bed, tile='auto', max_side=MAP_SIDE)
    png = Image.open(io.BytesIO(base64.b64decode(row['map'].split(',', 1)[1])))
    assert png.size==(m.shape[1], m.shape[0]) and np.abs(np.asarray(png)[...,3] - 255*map_rgba(m)[...,3]).max() <= 1
    for bad,says in (('3', 'tile 3: must be a whole number of at least'), ('many', "tile 'many': must be a whole number")):
        r = _post(server, [bed], tile=bad)
        assert r.status_code==400 and says in r.json()['error'], r.text

def _other_formats(flower_data, folder):
    "A field saved as a microscope's TIFF and an iPhone's HEIC: formats browsers don't show in an <img>"
    img = Image.open(_imgs(flower_data, 1)[0])
    for f in ('field.tif', 'field.heic'): img.save(folder/f)
    return [folder/'field.tif', folder/'field.heic'],img.size

def test_previews_of_what_browsers_cant_show(server, counter, flower_data, tmp_path):
    paths,size = _other_formats(flower_data, tmp_path)
    img = Image.open(_imgs(flower_data, 1)[0])
    img.save(tmp_path/'phone.jpg', 'MPO', save_all=True, append_images=[img.rotate(90)]) # a phone's JPEG with a second picture
    rows = _post(server, [_imgs(flower_data, 1)[0], tmp_path/'phone.jpg', *paths]).json()
    assert 'preview' not in rows[0] and 'preview' not in rows[1] and 'count' in rows[1] # JPEGs the browser shows itself
    for r,p in zip(rows[2:], paths):
        head,data = r['preview'].split(',', 1)
        assert head=='data:image/jpeg;base64' and Image.open(io.BytesIO(base64.b64decode(data))).size==size
        assert abs(r['count'] - counter.predict(p)) < 1e-4

def test_non_image_rejected_and_server_keeps_serving(server, flower_data):
    r = _post(server, extra=[('files', ('notes.jpg', b'not an image at all', 'image/jpeg'))])
    assert r.status_code==415 and 'notes.jpg: not a supported image' in r.json()['error']
    mixed = _post(server, _imgs(flower_data, 1), extra=[('files', ('empty.png', b'', 'image/png'))])
    assert mixed.status_code==200 and 'count' in mixed.json()[0] and 'empty image data' in mixed.json()[1]['error']
    assert httpx.get(server+'/health').status_code==200

def test_oversize_rejected_and_server_keeps_serving(server, flower_data):
    big = os.urandom(int(1.5*1024*1024))
    r = _post(server, extra=[('files', ('huge.jpg', big, 'image/jpeg'))])
    assert r.status_code==413 and 'at most 1 MB' in r.json()['error']
    assert _post(server, _imgs(flower_data, 1)).status_code==200

def test_missing_field(server):
    r = httpx.post(server+'/api/count', files=[('photo', ('a.jpg', b'x', 'image/jpeg'))])
    assert r.status_code==400 and 'field "files"' in r.json()['error']

def test_bounded_load(server, flower_data):
    "200 requests, 8 at a time: every one answered correctly"
    paths = _imgs(flower_data, 8)
    with httpx.Client(timeout=60) as client:
        def one(i):
            p = paths[i%len(paths)]
            r = client.post(server+'/api/count', files=[('files', (p.name, p.read_bytes(), 'image/jpeg'))])
            return r.status_code, r.json()[0].get('count')
        with ThreadPoolExecutor(8) as ex: res = list(ex.map(one, range(200)))
    assert all(s==200 and c is not None for s,c in res)
    by_img = {}
    for i,(_,c) in enumerate(res): by_img.setdefault(i%len(paths), set()).add(round(c, 4))
    assert all(len(v)==1 for v in by_img.values()) # concurrent requests don't mix up answers

@pytest.fixture(scope='module')
def chrome_tmp(tmp_path_factory):
    "A short folder for Chromium's temporary files: under a test's own, longer `tmp_path` Chrome would not start (a socket's path has at most 107 bytes)"
    return tmp_path_factory.mktemp('chrome')

def _browser(tmp):
    "A headless Chromium for the page, its temporary files in `tmp`: in /tmp each run left 8 profile folders behind"
    chrome,driver = shutil.which('chromium') or shutil.which('chromium-browser'),shutil.which('chromedriver')
    if not (chrome and driver):
        if os.environ.get('CI'): pytest.fail('CI must run the browser test: .ci/run installs chromium and chromium-driver')
        pytest.skip('headless Chromium test skipped: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1000,800'):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver, env={**os.environ, 'TMPDIR': str(tmp)}), options=opts)

def _drop(b, paths):
    "Photos given to the page as a person's drop does: the driver types their paths into the file input a person reaches by its label"
    from selenium.webdriver.common.by import By
    inp = b.find_element(By.ID, 'files')
    b.execute_script('arguments[0].hidden = false', inp)
    inp.send_keys('\n'.join(map(str, paths)))

def test_page_counts_a_dropped_photo(server, counter, flower_data, chrome_tmp):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    b = _browser(chrome_tmp)
    try:
        b.get(server+'/')
        p = _imgs(flower_data, 1)[0]
        _drop(b, [p])
        shown = WebDriverWait(b, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.count'))
        assert abs(float(shown[0].text) - counter.predict(p)) < 0.051 # the page shows one decimal
        assert b.find_element(By.ID, 'total-count').text==shown[0].text
        c,lo,hi = counter.predict_interval(p)
        assert b.find_element(By.CSS_SELECTOR, '.interval').text==f'({lo:.1f}–{hi:.1f})'
        overlay,toggle = b.find_element(By.CSS_SELECTOR, '.photo img.map'),b.find_element(By.ID, 'show-maps')
        assert toggle.is_displayed() and not overlay.is_displayed() # the photo as taken, until asked
        toggle.click()
        assert overlay.is_displayed() and overlay.rect==b.find_element(By.CSS_SELECTOR, '.photo img').rect # over the photo, exactly
        assert b.execute_script('return arguments[0].complete && arguments[0].naturalWidth', overlay)==Image.open(p).size[0]
        if os.environ.get('FLOWERS_SCREENSHOT'): b.save_screenshot(os.environ['FLOWERS_SCREENSHOT'])
        toggle.click()
        assert not overlay.is_displayed()
    finally: b.quit()

def test_page_counts_by_windows_when_ticked(server, counter, flower_data, tmp_path, chrome_tmp):
    "A photo of a whole bed: ticking 'Count by windows' after it was counted (as an unusual photo's note says to) counts it again by windows, without an interval; unticking, whole"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    bed = _mosaic(flower_data, tmp_path)
    whole,tiled = counter.predict(bed),counter.predict(bed, tile='auto')
    assert abs(whole - tiled) > 0.5 # else the page's count could not tell the two ways apart
    def _shows(b, n): # the one card's count once it is within rounding of `n`
        return WebDriverWait(b, 60).until(lambda d: len(cs := d.find_elements(By.CSS_SELECTOR, '.count'))==1 and abs(float(cs[0].text) - n) < 0.051 and cs)
    b = _browser(chrome_tmp)
    try:
        b.get(server+'/')
        _drop(b, [bed])
        _shows(b, whole)
        b.find_element(By.ID, 'by-windows').click()
        _shows(b, tiled)
        assert [e.text for e in b.find_elements(By.CSS_SELECTOR, '.interval')]==[f"by windows of {counter.tile_px('auto')} px"] # no interval
        assert b.find_element(By.ID, 'total-count').text==f'{tiled:.1f}' # the first count is gone from the total
        b.find_element(By.ID, 'by-windows').click()
        _shows(b, whole)
        assert not b.find_elements(By.CSS_SELECTOR, '.card .info div.interval') # counted whole again: an interval, no windows line
    finally: b.quit()

def test_page_ticked_while_counting_counts_every_photo_by_windows(server, counter, flower_data, tmp_path, chrome_tmp):
    "The box ticked while photos are on their way to the server: when their counts come back they are counted again, by windows"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    bed = _mosaic(flower_data, tmp_path)
    beds = [shutil.copy(bed, tmp_path/f'bed{i}.jpg') for i in range(16)] # counted with their maps: long enough to be ticked meanwhile
    whole,tiled = counter.predict(bed),counter.predict(bed, tile='auto')
    assert abs(whole - tiled) > 0.5
    b = _browser(chrome_tmp)
    try:
        b.get(server+'/')
        _drop(b, beds)
        b.find_element(By.ID, 'by-windows').click()
        assert b.find_element(By.ID, 'total').text.startswith('Counting 16 photos') and not b.find_elements(By.CSS_SELECTOR, '.card') # still in flight
        WebDriverWait(b, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.count'))==16 and d.find_elements(By.ID, 'total-count'))
        assert all(abs(float(e.text) - tiled) < 0.051 for e in b.find_elements(By.CSS_SELECTOR, '.count')) # none kept its whole count
        assert abs(float(b.find_element(By.ID, 'total-count').text) - 16*tiled) < 0.051
    finally: b.quit()

def test_page_shows_tiff_and_heic_photos(server, flower_data, tmp_path, chrome_tmp):
    "Chromium shows neither format in an <img>: the page shows the preview the server sends"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    paths,size = _other_formats(flower_data, tmp_path)
    b = _browser(chrome_tmp)
    try:
        b.get(server+'/')
        _drop(b, paths)
        WebDriverWait(b, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.count'))==2)
        photos = b.find_elements(By.CSS_SELECTOR, '.photo img:not(.map)')
        WebDriverWait(b, 10).until(lambda d: all(d.execute_script('return arguments[0].complete', p) for p in photos))
        assert [b.execute_script('return arguments[0].naturalWidth', p) for p in photos]==[size[0]]*2
    finally: b.quit()

def test_page_never_runs_a_file_name(server, flower_data, tmp_path, chrome_tmp):
    "A photo named like markup, and a broken one whose error message repeats the name, show as text"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    evil = "<img src=x onerror=document.title='PWNED'>"
    good,bad = tmp_path/f'{evil}.jpg',tmp_path/f'{evil}2.jpg'
    shutil.copy(_imgs(flower_data, 1)[0], good); bad.write_bytes(b'not an image')
    b = _browser(chrome_tmp)
    try:
        b.get(server+'/')
        _drop(b, [good, bad])
        WebDriverWait(b, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.card'))==2)
        time.sleep(0.5) # an injected onerror would fire now
        assert b.title!='PWNED' and not b.find_elements(By.CSS_SELECTOR, '.card .info img')
        assert evil in b.find_element(By.CSS_SELECTOR, '.error').text and f'{evil}.jpg' in b.find_elements(By.CSS_SELECTOR, '.card .info')[0].text
    finally: b.quit()

def test_page_csv_is_safe_for_spreadsheets(server, flower_data, tmp_path, chrome_tmp):
    "The page's CSV: a file name starting with = + - or @ is text, not a formula a spreadsheet would run (a leading ' doubled, to be read back); commas are quoted"
    import csv
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    # (Chrome sends a name's " as %22, as the HTML standard says)
    names = ['=HYPERLINK(1,2).jpg', '+1.jpg', '-1.jpg', '@SUM(1).jpg', "'quoted.jpg", 'plain, with a comma.jpg']
    for n in names: shutil.copy(_imgs(flower_data, 1)[0], tmp_path/n)
    b = _browser(chrome_tmp)
    try:
        b.get(server+'/')
        # the download's Blob, kept as the page makes it, and no file saved by the browser
        b.execute_script("window.made = []; const make = URL.createObjectURL; URL.createObjectURL = x => { made.push(x); return make(x); };"
                         "HTMLAnchorElement.prototype.click = function() {};")
        _drop(b, [tmp_path/n for n in names])
        WebDriverWait(b, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.count'))==len(names))
        b.find_element(By.ID, 'csv').click()
        text = b.execute_async_script('const done = arguments[0]; made.at(-1).text().then(done);')
    finally: b.quit()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0])==['image', 'count', 'low', 'high', 'tile', 'unusual', 'note', 'error']
    assert [r['image'] for r in rows]==["'"+n if n[0] in "=+-@'" else n for n in names]
    assert all(float(r['count'])>=0 and r['error']=='' for r in rows)
