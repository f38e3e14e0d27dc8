"""One isolated checkout per worker run, at exactly the requested revision.

Layout under the worker's `workdir` (every folder here carries MARKER; nothing else is deleted):

    workdir/.facediff-worker            the marker: this folder is the worker's
    workdir/mirrors/<url hash>.git      a bare mirror per repository URL (hash of the URL, so two
                                        repos with one name never meet), updated under a lock
    workdir/mirrors/<url hash>.lock
    workdir/dvc-cache/                  one DVC cache shared by the runs (DVC allows sharing)
    workdir/runs/<run id>/              a clone of the mirror at one SHA, for one run only

The revision is resolved after a fetch that moves the mirror's branches to the remote's, so
`main` means the remote's main now, never a stale local branch.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from tasks.reporting.log import get_logger
from tasks.worker.commands import CommandFailed, child_env, run

MARKER = ".facediff-worker"
# Branch names, tags and SHAs: no option-like or whitespace values reach git's command line.
REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./@^~+-]*$")
SHA = re.compile(r"^[0-9a-f]{40}$")


class InvalidInput(ValueError):
    """A parameter that can never work: rejected before anything touches the disk."""


class RevisionNotFound(LookupError):
    """The revision does not exist in the repository (a deterministic failure: never retried)."""


class NotOwned(PermissionError):
    """A folder the worker did not create (no marker): it is never deleted or reused."""


def validate_repo_url(repo_url: object) -> str:
    if not isinstance(repo_url, str) or not repo_url.strip():
        raise InvalidInput(
            "repo_url is empty: set it in the deployment (FACEDIFF_REPO_URL when running "
            "`prefect deploy`) or pass --repo-url"
        )
    if repo_url != repo_url.strip() or repo_url.startswith("-") or any(c.isspace() for c in repo_url):
        raise InvalidInput(f"repo_url {repo_url!r} is not a git URL or path")
    return repo_url


def validate_revision(revision: object) -> str:
    if not isinstance(revision, str):
        # `prefect deployment run -p revision=1234567` parses an all-digit SHA as a number.
        raise InvalidInput(
            f"revision must be a string, got {type(revision).__name__} {revision!r}: quote it, "
            'e.g. -p revision=\'"1234567"\' or --params \'{"revision": "1234567"}\''
        )
    if not REVISION.match(revision) or ".." in revision or revision.endswith((".lock", "/", ".")):
        raise InvalidInput(f"revision {revision!r} is not a branch, tag or commit SHA")
    return revision


def url_key(repo_url: str) -> str:
    """Names the mirror of `repo_url`: a hash of the whole URL, not the repository's name."""
    return hashlib.sha256(repo_url.encode()).hexdigest()[:16]


def claim_folder(path: Path) -> Path:
    """Create `path` (or accept it when it carries MARKER) and mark it as the worker's.

    An existing folder without the marker that is not empty is refused: it belongs to someone.
    Safe when several runs claim one folder at once: one listing decides, and a run that saw the
    folder empty only adds the marker another run may have written already.
    """
    path = path.expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        names = set(os.listdir(path))
    except (FileExistsError, NotADirectoryError):  # a file stands there
        names = {"(a file)"}
    if names and not (MARKER in names and (path / MARKER).is_file()):
        raise NotOwned(
            f"{path} exists and was not created by the worker (no {MARKER} in it): "
            "choose an empty or new folder for workdir"
        )
    (path / MARKER).write_text("created by the facediff GPU worker; it may delete what is under this folder\n")
    return path


def remove_owned(path: Path) -> None:
    """Delete `path` only if the worker created it (MARKER inside); otherwise raise NotOwned."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_symlink() or not (path / MARKER).is_file():
        raise NotOwned(f"refusing to delete {path}: it has no {MARKER}, so the worker did not create it")
    shutil.rmtree(path)


@contextmanager
def locked(lock_file: Path):
    """An exclusive lock between runs (processes) on one worker machine."""
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_mirror(workdir: Path, repo_url: str) -> Path:
    """The bare mirror of `repo_url`, its branches and tags fetched now (pruned as the remote's).

    Only refs/heads and refs/tags are mirrored: experiment refs another run made here are left be.
    """
    mirrors = workdir / "mirrors"
    mirrors.mkdir(exist_ok=True)
    mirror = mirrors / f"{url_key(repo_url)}.git"
    if not (mirror / "HEAD").is_file():
        run(["git", "init", "--quiet", "--bare", str(mirror)])
        run(["git", "-C", str(mirror), "remote", "add", "origin", repo_url])
        run(["git", "-C", str(mirror), "config", "gc.auto", "0"])  # runs clone from it: keep objects
    recorded = run(["git", "-C", str(mirror), "remote", "get-url", "origin"]).strip()
    if recorded != repo_url:  # a hash collision or a hand-edited mirror: never fetch from elsewhere
        raise CommandFailed(["git", "remote", "get-url"], 1, f"{mirror} mirrors {recorded}, not {repo_url}")
    run(
        [
            "git",
            "-C",
            str(mirror),
            "fetch",
            "--quiet",
            "--prune",
            "--force",
            "origin",
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ]
    )
    return mirror


def resolve_revision(mirror: Path, revision: str) -> str:
    """The full SHA `revision` names in the freshly fetched mirror, or RevisionNotFound."""
    try:
        out = run(
            ["git", "-C", str(mirror), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"]
        )
    except CommandFailed:
        raise RevisionNotFound(
            f"revision {revision!r} is not in {run(['git', '-C', str(mirror), 'remote', 'get-url', 'origin']).strip()}"
            " (pushed? a typo?)"
        ) from None
    sha = out.strip().splitlines()[-1]
    if not SHA.match(sha):
        raise RevisionNotFound(f"git resolved {revision!r} to {sha!r}, not a commit SHA")
    return sha


def fetch_revision(workdir: str | Path, repo_url: str, revision: str) -> tuple[Path, str]:
    """Update the mirror of `repo_url` and resolve `revision` there, under the mirror's lock."""
    root = claim_folder(Path(workdir))
    (root / "mirrors").mkdir(exist_ok=True)
    with locked(root / "mirrors" / f"{url_key(repo_url)}.lock"):
        mirror = update_mirror(root, repo_url)
        sha = resolve_revision(mirror, revision)
    get_logger().info("revision %s of %s is %s", revision, repo_url, sha)
    return mirror, sha


def isolated_checkout(workdir: str | Path, mirror: Path, repo_url: str, sha: str, run_id: str) -> Path:
    """A clone of the mirror at `sha` in workdir/runs/<run_id>, for this run alone.

    Its `origin` is the real repository, so results are pushed there; the DVC cache is the
    worker's shared one (DVC supports a cache shared by several workspaces).
    """
    root = Path(workdir).expanduser().absolute()
    if not re.match(r"^[A-Za-z0-9_.-]+$", run_id):
        raise InvalidInput(f"run id {run_id!r} cannot name a folder")
    runs = root / "runs"
    runs.mkdir(exist_ok=True)
    dest = runs / run_id
    if dest.exists():  # a run id is unique; a folder of that name is a retry's leftover at best
        remove_owned(dest)
    # --local hard-links objects: fast, and independent of the mirror's later fetches.
    run(["git", "clone", "--quiet", "--local", "--no-checkout", str(mirror), str(dest)])
    (dest / ".git" / "info").mkdir(exist_ok=True)
    (dest / MARKER).write_text(f"worker run {run_id} at {sha}\n")
    with open(dest / ".git" / "info" / "exclude", "a") as f:
        f.write(f"/{MARKER}\n")  # never committed with the results
    run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", sha])
    run(["git", "-C", str(dest), "remote", "set-url", "origin", repo_url])
    cache = root / "dvc-cache"
    cache.mkdir(exist_ok=True)
    if (dest / ".dvc").is_dir():
        run(["dvc", "cache", "dir", "--local", str(cache)], dest, env=child_env())
    get_logger().info("checkout of %s for run %s: %s", sha[:12], run_id, dest)
    return dest
