"""The real download code against loopback servers that answer the way the real ones do.

- Cloud Storage, public object: 200 with Content-Length, 206 to a Range request, 416 past the end;
  a 5xx, a cut body or a reset connection (retried with backoff, then resumed); the bucket's
  browser address, which redirects a script to a sign-in page.
- Google Drive, large file: the "can't scan this file for viruses" page and its confirm form; the
  quota page.
- Bodies shorter than announced, or whose checksum does not match: never a final file.

tasks.download.fetch runs as is, also through tasks.cartoon.fetch (Cartoon Set) and
tasks.faces.fetch (FFHQ).
"""

import hashlib
import http.server
import io
import json
import re
import socket
import struct
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import tasks.download.fetch as dl
from tasks.cartoon.config import FetchCartoonsConfig
from tasks.cartoon.fetch import fetch_cartoons
from tasks.download.fetch import (
    DownloadError,
    DriveQuotaError,
    PageError,
    SignInPageError,
    download_file,
    storage_api_url,
)
from tasks.faces.fetch import fetch_ffhq

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OBJECT = "/storage/v1/b/cartoonset_public_files/o/cartoonset10k.tgz"  # the JSON API's download path
OBJECT_URL = "https://storage.googleapis.com" + OBJECT + "?alt=media"


# --- the loopback server -------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        route = server.routes.get(urllib.parse.urlsplit(self.path).path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def query(self) -> dict:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    """Routes by path (tests set them); logs (path with query, Range header) of every request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes, self.log = {}, []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def handle_error(self, request, client_address):
        pass  # a connection the test reset on purpose


@pytest.fixture
def server():
    srv = Server()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Record the backoff's waits instead of sleeping them: the tests take seconds, not minutes."""
    waits = []
    monkeypatch.setattr(dl, "_sleep", waits.append)
    return waits


def obj(data: bytes, *, cut_at=None, reset_at=None, length=True, headers=()):
    """A Cloud Storage object: 200 whole, 206 with Content-Range for `Range: bytes=N-`, 416 past the end.

    `cut_at`: send only that many body bytes, then close (a body shorter than its Content-Length).
    `reset_at`: send that many, then reset the connection. `length=False`: no Content-Length, the
    body ends where the connection closes.
    """

    def route(h):
        asked = h.headers.get("Range")
        start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1]) if asked else 0
        if asked and start >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:]
        h.send_response(206 if asked else 200)
        h.send_header("Content-Type", "application/x-tar")
        if asked:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if length:
            h.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        if reset_at is not None:
            return reset(h, body[:reset_at])
        h.wfile.write(body[:cut_at])

    return route


def reset(h, sent: bytes):
    """Send `sent`, give the client time to take it, then close with a TCP reset (SO_LINGER 0)."""
    h.wfile.write(sent)
    time.sleep(0.2)
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.rfile.close()
    h.connection.close()


def in_turn(*routes):
    """Answer the first request with routes[0], the next with routes[1], ...; the last answers the rest."""
    queue = list(routes)
    return lambda h: (queue.pop(0) if len(queue) > 1 else queue[0])(h)


def status(code: int):
    return lambda h: h.send_error(code)


def page(h, html: str, code: int = 200):
    body = html.encode()
    h.send_response(code)
    h.send_header("Content-Type", "text/html; charset=utf-8")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def ranges(srv) -> list:
    return [r for _, r in srv.log]


# --- Cloud Storage -------------------------------------------------------------------------


def test_gcs_object_200_with_content_length(server, tmp_path):
    server.routes[OBJECT] = obj(PAYLOAD)
    path = download_file(server.url(OBJECT + "?alt=media"), tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and ranges(server) == [None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]


def test_gcs_resumes_kept_bytes_with_a_range_request(server, tmp_path):
    server.routes[OBJECT] = obj(PAYLOAD)
    (tmp_path / "a.tgz.partial").write_bytes(PAYLOAD[:300_000])
    download_file(server.url(OBJECT + "?alt=media"), tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert ranges(server) == ["bytes=300000-"] and (tmp_path / "a.tgz").read_bytes() == PAYLOAD


def test_gcs_cut_body_then_5xx_retries_with_backoff_and_resumes(server, tmp_path, quick_backoff):
    server.routes[OBJECT] = in_turn(obj(PAYLOAD, cut_at=400_000), status(503), obj(PAYLOAD))
    download_file(server.url(OBJECT + "?alt=media"), tmp_path / "a.tgz", sha256=SHA, backoff=0.5, progress=False)
    assert ranges(server) == [None, "bytes=400000-", "bytes=400000-"]
    assert quick_backoff == [0.5, 1.0]  # doubling
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD


def test_gcs_reset_connection_retries_and_resumes(server, tmp_path):
    server.routes[OBJECT] = in_turn(obj(PAYLOAD, reset_at=300_000), obj(PAYLOAD))
    download_file(server.url(OBJECT + "?alt=media"), tmp_path / "a.tgz", sha256=SHA, progress=False)
    first, second = ranges(server)
    # What arrived before the reset was kept (all 300000 bytes, unless the reset overtook some).
    assert first is None and 0 < int(re.fullmatch(r"bytes=(\d+)-", second)[1]) <= 300_000
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD


def test_gcs_browser_address_sign_in_page_is_a_one_line_error_naming_the_url_form_that_works(server, tmp_path):
    def browser(h):  # what storage.cloud.google.com does to a client without a Google login
        h.send_response(302)
        h.send_header("Location", "/ServiceLogin?service=cds&continue=" + urllib.parse.quote(h.path))
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/cartoonset_public_files/cartoonset10k.tgz"] = browser
    server.routes["/ServiceLogin"] = lambda h: page(
        h,
        "<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head>"
        "<body><form action='/signin/v2/identifier'><input name='identifier'></form></body></html>",
    )
    with pytest.raises(SignInPageError) as err:
        download_file(server.url("/cartoonset_public_files/cartoonset10k.tgz"), tmp_path / "a.tgz", progress=False)
    message = str(err.value)
    assert "sign-in page" in message and "\n" not in message
    assert "https://storage.googleapis.com/storage/v1/b/<bucket>/o/<file>?alt=media" in message
    assert len(server.log) == 2  # no retries: asking again gives the same page
    assert list(tmp_path.iterdir()) == []


def test_storage_api_url_of_the_browser_address():
    assert (
        storage_api_url("https://storage.cloud.google.com/cartoonset_public_files/cartoonset10k.tgz")
        == "https://storage.googleapis.com/storage/v1/b/cartoonset_public_files/o/cartoonset10k.tgz?alt=media"
    )
    assert storage_api_url("https://storage.cloud.google.com/b/dir/x.tgz").endswith("/b/b/o/dir%2Fx.tgz?alt=media")
    assert storage_api_url(OBJECT_URL) is None and storage_api_url("https://example.org/a/b.tgz") is None


def test_params_cartoon_urls_use_the_form_that_works():
    import yaml

    with open(Path(__file__).parents[2] / "params.yaml") as f:
        urls = yaml.safe_load(f)["fetch_cartoons"]["urls"]
    for name, url in urls.items():
        assert url == f"https://storage.googleapis.com/storage/v1/b/cartoonset_public_files/o/{name}.tgz?alt=media"


def test_gcs_404_fails_at_once_without_retries(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404") as err:
        download_file(server.url("/storage/v1/b/x/o/missing.tgz?alt=media"), tmp_path / "a.tgz", progress=False)
    assert "could not download" not in str(err.value)  # the stage's retry condition must not retry it
    assert len(server.log) == 1


# --- Google Drive --------------------------------------------------------------------------


def virus_scan_page(download_url: str, file_id: str, uuid: str) -> str:
    """Drive's interstitial for a file too large to scan: one line, a GET form with hidden fields."""
    return (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
        '<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can\'t scan '
        'this file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-name-size">'
        f'<a href="/open?id={file_id}">ffhq-dataset-v2.json</a> (255M)</span> is too large for Google to '
        "scan for viruses. Would you still like to download this file?</p>"
        f'<form id="download-form" action="{download_url}" method="get">'
        '<input type="submit" id="uc-download-link" value="Download anyway"/>'
        f'<input type="hidden" name="id" value="{file_id}">'
        '<input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t">'
        f'<input type="hidden" name="uuid" value="{uuid}"></form></div></div></body></html>\n'
    )


QUOTA_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body><div class="uc-main">'
    '<div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this '
    'time.</p><p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please '
    "try accessing the file again later. If the file you are trying to access is particularly large or is shared "
    "with many people, it may take up to 24 hours to be able to view or download the file. If you still can't "
    "access a file after 24 hours, contact your domain administrator.</p></div></div></body></html>\n"
)


def drive(srv, files: dict, *, large=(), quota=(), quota_status=200, cuts=None):
    """Drive's two hosts on one server: `/uc?id=` redirects to `/download?id=&export=download`, which
    serves a small file at once, a large one only after its virus-scan page is confirmed (with the
    cookie that page set), and a file over quota as the quota page. `cuts`: {id: byte} to cut the
    first transfer of that file there."""
    cuts = dict(cuts or {})

    def uc(h):
        h.send_response(303)
        h.send_header("Location", f"/download?id={h.query()['id']}&export=download")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def download(h):
        q = h.query()
        fid = q["id"]
        if fid in quota:
            return page(h, QUOTA_PAGE, quota_status)
        if fid in large and q.get("confirm") != "t":
            body = virus_scan_page(srv.url("/download"), fid, f"uuid-{fid}").encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Set-Cookie", f"download_warning_{fid}=t; Path=/")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            return h.wfile.write(body)
        if fid in large and (
            q.get("uuid") != f"uuid-{fid}" or f"download_warning_{fid}=t" not in (h.headers.get("Cookie") or "")
        ):
            return h.send_error(403)  # a confirm without the page's form fields and cookie
        disposition = ("Content-Disposition", f'attachment; filename="{fid}"')
        obj(files[fid], cut_at=cuts.pop(fid, None), headers=[disposition])(h)

    srv.routes["/uc"], srv.routes["/download"] = uc, download


def test_drive_virus_scan_page_is_confirmed_and_the_file_arrives(server, tmp_path):
    drive(server, {"big": PAYLOAD}, large={"big"})
    path = download_file(server.url("/uc?id=big&export=download"), tmp_path / "f.json", sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [p for p, _ in server.log] == [
        "/uc?id=big&export=download",
        "/download?id=big&export=download",
        "/download?id=big&export=download&confirm=t&uuid=uuid-big",
    ]


def test_drive_cut_transfer_resumes_through_the_confirm_page(server, tmp_path):
    drive(server, {"big": PAYLOAD}, large={"big"}, cuts={"big": 200_000})
    download_file(server.url("/uc?id=big"), tmp_path / "f.json", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert (tmp_path / "f.json").read_bytes() == PAYLOAD
    assert ranges(server)[3:] == ["bytes=200000-"] * 3  # the second pass: uc, page, file, each from byte 200000


@pytest.mark.parametrize("code", [200, 403])
def test_drive_quota_page_is_a_clear_error_at_once(server, tmp_path, code):
    drive(server, {"big": PAYLOAD}, large={"big"}, quota={"big"}, quota_status=code)
    with pytest.raises(DriveQuotaError, match=r"quota exceeded.*another mirror or a local copy") as err:
        download_file(server.url("/uc?id=big"), tmp_path / "f.json", progress=False)
    assert "\n" not in str(err.value) and "could not download" not in str(err.value)
    assert len(server.log) == 2 and list(tmp_path.iterdir()) == []  # no retries, nothing written


def test_an_unknown_html_page_is_an_error_not_the_file(server, tmp_path):
    server.routes["/x.tgz"] = lambda h: page(h, "<html><head><title>Mirror maintenance</title></head></html>")
    with pytest.raises(PageError, match=r"HTML page \('Mirror maintenance'\), not the file"):
        download_file(server.url("/x.tgz"), tmp_path / "x.tgz", progress=False)
    assert list(tmp_path.iterdir()) == []


def ffhq_metadata(srv, n: int) -> tuple[bytes, dict]:
    """FFHQ-format metadata whose file_urls are Drive links on `srv`; returns it and the photos' bytes."""
    photos, meta = {}, {}
    for i in range(n):
        data = bytes([i + 1]) * (1000 + i)
        photos[f"img{i}"] = data
        meta[str(i)] = {
            "category": "training",
            "metadata": {},
            "image": None,
            "thumbnail": None,
            "in_the_wild": {
                "file_url": srv.url(f"/uc?id=img{i}"),
                "file_path": f"in-the-wild-images/00000/{i:05d}.png",
                "file_size": len(data),
                "file_md5": hashlib.md5(data).hexdigest(),
                "pixel_size": [1, 1],
            },
        }
    return json.dumps(meta).encode(), photos


def ffhq_kwargs(srv, tmp_path, meta: bytes) -> dict:
    return dict(
        images="in_the_wild",
        num_images=None,
        metadata_url=srv.url("/uc?id=meta&export=download"),
        metadata_md5=hashlib.md5(meta).hexdigest(),
        metadata_size=len(meta),
        num_threads=2,
        retries=1,
        download_dir=tmp_path / "downloads",
        progress=False,
        log=lambda s: None,
    )


def test_ffhq_from_drive_metadata_behind_the_virus_scan_page(server, tmp_path):
    meta, photos = ffhq_metadata(server, 3)
    drive(server, {"meta": meta, **photos}, large={"meta"})
    m = fetch_ffhq(tmp_path / "raw", **ffhq_kwargs(server, tmp_path, meta))
    assert m["counts"]["images"] == 3
    for i in range(3):
        assert (tmp_path / f"raw/in-the-wild-images/00000/{i:05d}.png").read_bytes() == photos[f"img{i}"]
    assert "/download?id=meta&export=download&confirm=t&uuid=uuid-meta" in [p for p, _ in server.log]


def test_ffhq_drive_quota_says_what_to_do(server, tmp_path):
    meta, photos = ffhq_metadata(server, 2)
    drive(server, {"meta": meta, **photos}, large={"meta"}, quota={"meta"})
    with pytest.raises(
        DriveQuotaError,
        match=r"quota exceeded.*fetch_faces\.ffhq\.base_url.*source: folder, photos in fetch_faces\.folder",
    ):
        fetch_ffhq(tmp_path / "raw", **ffhq_kwargs(server, tmp_path, meta))

    drive(server, {"meta": meta, **photos}, large={"meta"}, quota={"img1"})  # the metadata passes, one photo not
    with pytest.raises(DownloadError, match=r"(?s)1 of 2 FFHQ files.*fetch_faces\.ffhq\.base_url.*00001\.png.*quota"):
        fetch_ffhq(tmp_path / "raw", **ffhq_kwargs(server, tmp_path, meta))
    assert (tmp_path / "raw/in-the-wild-images/00000/00000.png").exists()


# --- bodies that are short or wrong --------------------------------------------------------


def test_short_body_is_never_a_final_file_and_a_rerun_resumes(server, tmp_path):
    server.routes[OBJECT] = in_turn(obj(PAYLOAD, cut_at=300_000), obj(PAYLOAD))
    url = server.url(OBJECT + "?alt=media")
    with pytest.raises(
        DownloadError,
        match=r"could not download .* after 1 attempts: connection closed at "
        r"300000 of 1048576 bytes; the 300000 bytes received are kept in "
        r".*a\.tgz\.partial, and a re-run resumes",
    ):
        download_file(url, tmp_path / "a.tgz", sha256=SHA, retries=0, progress=False)
    assert not (tmp_path / "a.tgz").exists() and (tmp_path / "a.tgz.partial").read_bytes() == PAYLOAD[:300_000]

    download_file(url, tmp_path / "a.tgz", sha256=SHA, retries=0, progress=False)  # the re-run
    assert ranges(server) == [None, "bytes=300000-"] and (tmp_path / "a.tgz").read_bytes() == PAYLOAD
    assert not (tmp_path / "a.tgz.partial").exists()


def test_checksum_mismatch_is_never_a_final_file_and_a_rerun_resumes(server, tmp_path):
    # No Content-Length and a connection that ends early: only the checksum can tell.
    server.routes[OBJECT] = in_turn(obj(PAYLOAD, length=False, cut_at=500_000), obj(PAYLOAD))
    url = server.url(OBJECT + "?alt=media")
    with pytest.raises(
        DownloadError,
        match=r"a\.tgz\.partial: sha256 \w+, expected \w+; not used: the 500000 bytes "
        r"received are kept in .*a\.tgz\.partial, where a re-run resumes",
    ):
        download_file(url, tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert not (tmp_path / "a.tgz").exists() and (tmp_path / "a.tgz.partial").stat().st_size == 500_000

    download_file(url, tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert ranges(server) == [None, "bytes=500000-"] and (tmp_path / "a.tgz").read_bytes() == PAYLOAD


@pytest.mark.parametrize("known_size", [True, False])
def test_whole_but_wrong_kept_bytes_are_fetched_again(server, tmp_path, known_size):
    server.routes[OBJECT] = obj(PAYLOAD)
    (tmp_path / "a.tgz.partial").write_bytes(bytes(len(PAYLOAD)))  # the right length, the wrong bytes
    size = len(PAYLOAD) if known_size else None
    download_file(server.url(OBJECT + "?alt=media"), tmp_path / "a.tgz", size=size, sha256=SHA, progress=False)
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD
    # Without a known size the server says where the file ends (416), then it comes again whole.
    assert ranges(server) == ([None] if known_size else [f"bytes={len(PAYLOAD)}-", None])


def test_whole_and_right_kept_bytes_are_used_without_a_request(server, tmp_path):
    (tmp_path / "a.tgz.partial").write_bytes(PAYLOAD)  # a run stopped between the last byte and the rename
    download_file(server.url(OBJECT + "?alt=media"), tmp_path / "a.tgz", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD and server.log == []


# --- Cartoon Set through fetch_cartoons --------------------------------------------------------


def cartoon_archive(n: int, tag: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(n):
            for name, data in ((f"cartoonset10k/cs{i}.png", b"png" + tag), (f"cartoonset10k/cs{i}.csv", b"csv")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cartoon_config(url: str) -> FetchCartoonsConfig:
    return FetchCartoonsConfig(
        source="cartoonset10k",
        folder="unused",
        num_images=0,
        seed=0,
        workers=1,
        urls={"cartoonset10k": url},
        sha256={"cartoonset10k": None},
    )


def test_cartoonset_without_a_published_checksum_is_pinned_by_its_first_download(server, tmp_path):
    first = cartoon_archive(3)
    server.routes[OBJECT] = obj(first)
    config, downloads = cartoon_config(server.url(OBJECT + "?alt=media")), tmp_path / "downloads"
    pin = downloads / "cartoonset10k.tgz.json"

    record = fetch_cartoons(str(tmp_path / "raw"), config, str(downloads))
    assert record["images"] == 3 and record["archive_size"] == len(first)
    assert record["archive_sha256"] == hashlib.sha256(first).hexdigest()
    assert record["archive_checksum"].startswith("recorded now")
    assert json.loads((tmp_path / "raw/fetch.json").read_text())["archive_sha256"] == record["archive_sha256"]
    assert json.loads(pin.read_text())["size"] == len(first)

    again = fetch_cartoons(str(tmp_path / "raw"), config, str(downloads))  # the kept archive, checked
    assert again["archive_checksum"].startswith("first download's record") and len(server.log) == 1

    archive = downloads / "cartoonset10k.tgz"
    archive.write_bytes(bytes(len(first)))  # damaged on disk: same size, other bytes
    fetch_cartoons(str(tmp_path / "raw"), config, str(downloads))
    assert archive.read_bytes() == first and len(server.log) == 2  # fetched again and verified

    archive.unlink()
    server.routes[OBJECT] = obj(cartoon_archive(3, tag=b"v2"))  # the publisher's file changed
    with pytest.raises(
        DownloadError, match=r"(size|sha256) .*expected .*checked against .*cartoonset10k\.tgz\.json.*delete"
    ):
        fetch_cartoons(str(tmp_path / "raw"), config, str(downloads))
    assert not archive.exists() and (downloads / "cartoonset10k.tgz.partial").exists()
