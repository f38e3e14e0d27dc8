import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from tasks.download.fetch import DownloadError, UnsafeArchiveError, download_file, safe_extract

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; can fail the first requests or cut a response short."""

    fail_first = 0
    cut_at = None
    requests: list = []

    def do_GET(self):
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_error(503)
            return
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cut_at is not None:
            self.wfile.write(body[: cls.cut_at])
            cls.cut_at = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.fail_first, RangeHandler.cut_at, RangeHandler.requests = 0, None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/cartoonset10k.tgz"
    httpd.shutdown()


def test_downloads_and_verifies(server, tmp_path):
    path = download_file(server, tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "a.tgz.partial").exists()


@pytest.mark.parametrize("suffix", [".partial", ".part"])  # .part: what earlier versions kept
def test_resumes_a_partial_download_with_a_range_request(server, tmp_path, suffix):
    (tmp_path / f"a.tgz{suffix}").write_bytes(PAYLOAD[:300_000])
    download_file(server, tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert RangeHandler.requests == ["bytes=300000-"]
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD


def test_retries_after_server_errors_and_dropped_connections(server, tmp_path):
    RangeHandler.fail_first, RangeHandler.cut_at = 1, 100_000
    download_file(server, tmp_path / "a.tgz", sha256=SHA, backoff=0.01, progress=False)
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD
    assert RangeHandler.requests[-1] == "bytes=100000-"  # resumed after the cut


def test_checksum_mismatch_is_an_error_and_the_file_is_never_used(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256 .* expected 00"):
        download_file(server, tmp_path / "a.tgz", sha256="00" * 32, progress=False)
    assert not (tmp_path / "a.tgz").exists() and (tmp_path / "a.tgz.partial").read_bytes() == PAYLOAD  # kept aside


def test_existing_good_file_is_reused_and_bad_one_replaced(server, tmp_path):
    (tmp_path / "a.tgz").write_bytes(PAYLOAD)
    download_file(server, tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert RangeHandler.requests == []
    (tmp_path / "a.tgz").write_bytes(b"stale")
    download_file(server, tmp_path / "a.tgz", sha256=SHA, progress=False)
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD


def test_file_urls_and_size_checks(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    download_file(
        src.as_uri(), tmp_path / "out.bin", size=len(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False
    )
    with pytest.raises(DownloadError, match="size 1048576 bytes, expected 5"):
        download_file(src.as_uri(), tmp_path / "out2.bin", size=5, progress=False)


def test_unreachable_host_fails_clearly_after_retries(tmp_path):
    with pytest.raises(DownloadError, match="could not download .* after 2 attempts.*no network here"):
        download_file(
            "http://127.0.0.1:9/x.tgz", tmp_path / "x.tgz", retries=1, backoff=0.01, timeout=2, progress=False
        )


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def file_member(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_safe_extract_extracts_regular_files(tmp_path):
    make_tar(tmp_path / "ok.tgz", [file_member("cartoonset10k/cs1.png"), file_member("cartoonset10k/cs1.csv")])
    names = safe_extract(tmp_path / "ok.tgz", tmp_path / "out")
    assert sorted(names) == ["cartoonset10k/cs1.csv", "cartoonset10k/cs1.png"]
    assert (tmp_path / "out/cartoonset10k/cs1.png").read_bytes() == b"x"


@pytest.mark.parametrize(
    "member, why",
    [
        (file_member("../evil.png"), "escapes"),
        (file_member("/tmp/evil.png"), "escapes"),
        (file_member("a/../../evil.png"), "escapes"),
    ],
)
def test_safe_extract_refuses_escaping_paths(tmp_path, member, why):
    make_tar(tmp_path / "bad.tgz", [file_member("good.png"), member])
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(tmp_path / "bad.tgz", tmp_path / "out")
    assert not (tmp_path / "out" / "good.png").exists()  # checked before anything is written


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_safe_extract_refuses_links(tmp_path, kind):
    info = tarfile.TarInfo("link.png")
    info.type, info.linkname = kind, "good.png"
    make_tar(tmp_path / "bad.tgz", [file_member("good.png"), (info, None)])
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        safe_extract(tmp_path / "bad.tgz", tmp_path / "out")


def test_truncated_archive_is_a_clear_error(tmp_path):
    make_tar(tmp_path / "ok.tgz", [file_member(f"cs{i}.png", bytes(5000)) for i in range(20)])
    data = (tmp_path / "ok.tgz").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DownloadError, match="not a complete tar archive"):
        safe_extract(tmp_path / "cut.tgz", tmp_path / "out")
