"""Downloads that resume, retry and verify, and archive extraction that cannot escape its target.

Used by every fetch stage. `file://` URLs go through the same code path as HTTP(S) (tests and
local mirrors use them). What the real servers do, and what this module does about it:

- Cloud Storage public objects answer 200 with Content-Length, and 206 to a Range request: bytes
  arrive in `<dest>.partial` and a retry or a re-run asks only for the rest.
- A 5xx, 408 or 429, a reset connection or a body shorter than its Content-Length is retried with
  exponential backoff (`BACKOFF` seconds, doubling), resuming from the bytes kept.
- An HTML page where a file was expected: Google Drive's "can't scan this file for viruses" page
  is followed through its confirm form; Drive's quota page, a sign-in page (a Cloud Storage
  browser address) or any other page is a one-line error that says what to do instead.
- `dest` appears only once it verifies (size, md5, sha256 as given); bytes that fail stay in
  `<dest>.partial`, never used, for a re-run to resume or, when they are whole, to replace.
"""

from __future__ import annotations

import html
import http.client
import http.cookiejar
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tasks.reporting.progress import progress as progress_bar
from tasks.tracking.hashing import file_digest

CHUNK = 1 << 20
BACKOFF = 2.0  # seconds before the first retry, doubling after each; tests make it small
RETRY_STATUS = {408, 429}  # client errors that mean "later", not "never"; every 5xx is retried too
MAX_PAGES = 3  # Drive's interstitial is one page; a chain of pages means something else
PAGE_LIMIT = 1 << 20  # an HTML page is read whole to parse it; real ones are a few kB
USER_AGENT = "facediff-download"
STORAGE_API = "https://storage.googleapis.com/storage/v1/b/<bucket>/o/<file>?alt=media"
DRIVE_QUOTA = "too many users have viewed or downloaded this file recently"
_sleep = time.sleep  # the backoff's wait, by a name tests replace to see the delays without waiting


class DownloadError(RuntimeError):
    """The file could not be fetched (after retries), or what arrived is not the expected file."""


class PageError(DownloadError):
    """An HTML page came where the file was expected, and asking again will not change that."""


class SignInPageError(PageError):
    """The URL leads to a login page (a Cloud Storage browser address, a private file)."""


class DriveQuotaError(PageError):
    """Google Drive refuses the file for now: too many downloads of it in the last 24 hours."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the target folder or is a link or special file."""


class _Interrupted(OSError):
    """The body ended before its announced length (retried like a reset connection)."""


def verify_file(path: Path, *, size: int | None = None, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise DownloadError naming the first check `path` fails."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path.name}: size {actual} bytes, expected {size} (truncated or wrong file)")
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                raise DownloadError(f"{path.name}: {algorithm} {got}, expected {expected}")


def storage_api_url(url: str) -> str | None:
    """The download URL of a public Cloud Storage object given by its browser (or XML API) address.

    `storage.cloud.google.com/<bucket>/<file>` is the console's address, which answers a script with
    a sign-in page; the JSON API's `?alt=media` form serves the bytes without one.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname not in ("storage.cloud.google.com", "storage.googleapis.com") or parsed.path.startswith(
        "/storage/v1/"
    ):
        return None
    bucket, _, name = parsed.path.lstrip("/").partition("/")
    if not (bucket and name):
        return None
    return f"https://storage.googleapis.com/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"


def download_file(
    url: str,
    dest: str | Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    backoff: float | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest`: resume `dest.partial`, retry with backoff, verify, rename into place.

    A `dest` that already exists and verifies is kept as it is (one that fails is deleted). Bytes
    that fail verification stay in `dest.partial`, never renamed to `dest`. `backoff`: seconds
    before the first retry (None: `BACKOFF`), doubling after each.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    checks = dict(size=size, md5=md5, sha256=sha256)
    if dest.exists():
        if _verifies(dest, checks):
            return dest
        dest.unlink()
    partial = _partial_path(dest)
    _fetch_with_retries(
        url,
        partial,
        checks,
        retries=retries,
        backoff=BACKOFF if backoff is None else backoff,
        timeout=timeout,
        progress=progress,
    )
    try:
        verify_file(partial, **checks)
    except DownloadError as exc:
        raise DownloadError(
            f"{exc}; not used: {_kept(partial)}, where a re-run resumes (or starts over, if they are already whole)"
        ) from None
    os.replace(partial, dest)
    return dest


def _verifies(path: Path, checks: dict) -> bool:
    try:
        verify_file(path, **checks)
    except DownloadError:
        return False
    return True


def _partial_path(dest: Path) -> Path:
    partial = dest.with_name(dest.name + ".partial")
    legacy = dest.with_name(dest.name + ".part")  # earlier versions kept bytes here: resume those too
    if legacy.exists() and not partial.exists():
        os.replace(legacy, partial)
    return partial


def _kept(partial: Path) -> str:
    n = partial.stat().st_size if partial.exists() else 0
    return f"the {n} bytes received are kept in {partial}" if n else "nothing received"


def _fetch_with_retries(
    url: str, partial: Path, checks: dict, *, retries: int, backoff: float, timeout: float, progress: bool
) -> None:
    opener = _opener()
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            _sleep(backoff * 2 ** (attempt - 1))
        try:
            return _fetch_into(url, partial, checks, opener, timeout, progress)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in RETRY_STATUS:  # 403, 404, ...: asking again will not help
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason} ({_kept(partial)})") from None
            last_error = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            last_error = exc
    reason = last_error.reason if type(last_error) is urllib.error.URLError else last_error
    raise DownloadError(
        f"could not download {url} after {retries + 1} attempts: {reason}; {_kept(partial)}, and a re-run "
        f"resumes (no network here? put the file at {partial.with_suffix('')} yourself, or point the source "
        f"at a local copy)"
    ) from last_error


def _opener() -> urllib.request.OpenerDirector:
    """One cookie jar for the requests of one download: Drive's confirm step may set one and want it back."""
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _fetch_into(url: str, partial: Path, checks: dict, opener, timeout: float, progress: bool) -> None:
    """Append to `partial` what it lacks (or start it over); raise OSError-likes for a broken transfer."""
    offset = partial.stat().st_size if partial.exists() else 0
    opened = _open_rest(url, offset, checks["size"], opener, timeout) if offset else None
    if opened is None:
        if offset and any(checks.values()) and _verifies(partial, checks):
            return  # the kept bytes are the whole file, and right: a run stopped before its rename
        opened = _open(url, 0, opener, timeout)  # whole but wrong bytes: resuming cannot mend them
    stream, announced, start = opened
    # The server's length says whether the body ended early; the expected size, only when it gives none.
    total = announced if announced is not None else checks["size"]
    name = partial.name.removesuffix(".partial")
    with (
        stream,
        open(partial, "ab" if start else "wb") as out,
        progress_bar(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        read = getattr(stream, "read1", stream.read)  # write what has arrived: a reset then loses none of it
        while block := read(CHUNK):
            out.write(block)
            bar.update(len(block))
    got = partial.stat().st_size
    if total is not None and got < total:
        raise _Interrupted(f"connection closed at {got} of {total} bytes")


def _open_rest(url: str, offset: int, size: int | None, opener, timeout: float):
    """`_open` after the `offset` bytes kept; None when those are already the whole file."""
    if size is not None and offset >= size:
        return None
    try:
        return _open(url, offset, opener, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # Range Not Satisfiable: nothing lies after `offset`
            return None
        raise


def _open(url: str, offset: int, opener, timeout: float) -> tuple[BinaryIO, int | None, int]:
    """Open `url` at byte `offset`: (stream, whole size if known, where the stream starts: offset or 0)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        if not os.path.isfile(path):
            raise DownloadError(f"{path} does not exist (from {url})")  # no retry can make it appear
        f = open(path, "rb")
        f.seek(offset)
        return f, os.fstat(f.fileno()).st_size, offset
    response = _open_http(url, offset, opener, timeout)
    if response.status != 206:  # a server that ignores Range sends it all: start over
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None, 0
    start, total = _content_range(response.headers, offset)
    if start != offset:
        response.close()
        if not offset:
            raise DownloadError(f"{url}: the server sent bytes from {start} on when asked for the whole file")
        return _open(url, 0, opener, timeout)  # resumed elsewhere than asked: start over
    return response, total, offset


def _content_range(headers, offset: int) -> tuple[int, int | None]:
    """(first byte, whole size) of a 206; without a Content-Range, take it as resumed at `offset`."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (headers.get("Content-Range") or "").strip())
    if m:
        return int(m[1]), None if m[2] == "*" else int(m[2])
    length = headers.get("Content-Length")
    return offset, int(length) + offset if length else None


def _open_http(url: str, offset: int, opener, timeout: float):
    """GET `url` from byte `offset`, through Drive's confirm page; any other HTML page raises PageError."""
    target = url
    for _ in range(MAX_PAGES):
        request = urllib.request.Request(target, headers={"User-Agent": USER_AGENT})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if _is_html(exc.headers):  # Drive's quota page may come with an error status
                _raise_for_known_page(url, exc.geturl() or target, _read_page(exc))
            raise
        if not _is_html(response.headers):
            return response
        target = _follow_page(url, response.geturl(), _read_page(response))
    raise PageError(
        f"{url}: still an HTML page after {MAX_PAGES} confirm steps, not the file; open it in a browser to see why"
    )


def _is_html(headers) -> bool:
    # None of the files fetched here is HTML, so an HTML answer is always a page in the way.
    return headers is not None and headers.get_content_type() == "text/html"


def _read_page(response) -> str:
    try:
        return response.read(PAGE_LIMIT).decode("utf-8", "replace")
    finally:
        response.close()


def _title(page: str) -> str:
    m = re.search(r"<title[^>]*>(.*?)</title>", page, re.S | re.I)
    return " ".join(html.unescape(m[1]).split()) if m else ""


def _follow_page(url: str, page_url: str, page: str) -> str:
    """The URL Drive's "can't scan this file for viruses" page confirms to; other pages raise PageError."""
    _raise_for_known_page(url, page_url, page)
    # Drive reshapes this page now and then; gdown (maintained for exactly that) knows its current form.
    from gdown.download import get_url_from_gdrive_confirmation
    from gdown.exceptions import FileURLRetrievalError

    try:
        return urllib.parse.urljoin(page_url, get_url_from_gdrive_confirmation(page))
    except FileURLRetrievalError:
        raise PageError(
            f"{url} answered with an HTML page ({_title(page) or 'untitled'!r}), not the file; "
            f"is the link public and right? open it in a browser to see"
        ) from None


def _raise_for_known_page(url: str, page_url: str, page: str) -> None:
    parsed = urllib.parse.urlparse(page_url)
    if (
        parsed.hostname == "accounts.google.com"
        or "servicelogin" in parsed.path.lower()
        or _title(page).lower().startswith("sign in")
    ):
        api = storage_api_url(url)
        raise SignInPageError(
            f"{url} led to a sign-in page, not the file (a Cloud Storage browser address, or a private "
            f"file); a public object downloads from {STORAGE_API}" + (f", here {api}" if api else "")
        )
    if DRIVE_QUOTA in page.lower() or "quota exceeded" in _title(page).lower():
        raise DriveQuotaError(
            f"Google Drive refuses {url} for now: download quota exceeded (too many downloads of this file "
            f"in the last 24 hours); use another mirror or a local copy of it, or try again tomorrow"
        )


def safe_extract(archive: str | Path, target: str | Path) -> list[str]:
    """Extract a tar archive into `target`, refusing links, special files and escaping paths.

    Every member is checked before anything is written, so a refused archive leaves nothing behind.
    Returns the names of the regular files extracted.
    """
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    kind = "link" if (m.issym() or m.islnk()) else "special file"
                    raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a {kind}; refusing to extract")
                dest = (target / m.name).resolve()
                if os.path.isabs(m.name) or not dest.is_relative_to(target):
                    raise UnsafeArchiveError(f"{archive}: member {m.name!r} escapes {target}; refusing to extract")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive} is not a complete tar archive: {exc}") from exc
    return [m.name for m in members if m.isfile()]


def copy_or_link(src: Path, dst: Path) -> None:
    """Hard-link when on the same filesystem (free), copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
