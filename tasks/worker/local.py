"""The user's side of a worker run, in their own checkout: what may be sent, and bringing results home.

Before a run: the worker runs commits, fetched from the git remote, so the working tree must be
clean and the commit must be on a branch or tag of that remote; each refusal ends with the command
that fixes it. After a run: an experiment comes home with `dvc exp pull`, a plain run as its results
branch (switched to) plus `dvc pull`; `dvc metrics diff` compares with the commit that was sent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GRIDS_HOME = Path(".dvc/tmp/submit")  # an experiment's grids are copied here (git-ignored by DVC)


class Refused(RuntimeError):
    """The commit cannot be sent as it is; the message says why and the command that fixes it."""


class CommandError(RuntimeError):
    """A git or dvc command failed on the user's side."""


def sh(repo: Path, *cmd: str) -> str:
    """Run git/dvc in `repo`, return stdout; CommandError with its last output line on failure."""
    proc = subprocess.run(_with_venv(cmd), cwd=repo, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise CommandError(f"{' '.join(cmd)} exited {proc.returncode}: {last[0]}")
    return proc.stdout


def _with_venv(cmd: tuple[str, ...]) -> list[str]:
    """dvc from this interpreter's venv, so the DVC that reads the results is the pinned one."""
    if cmd[0] == "dvc":
        dvc = Path(sys.executable).with_name("dvc")
        return [str(dvc) if dvc.exists() else "dvc", *cmd[1:]]
    return list(cmd)


def repo_root(cwd: Path) -> Path:
    try:
        return Path(sh(cwd, "git", "rev-parse", "--show-toplevel").strip())
    except CommandError:
        raise Refused(f"{cwd} is not in a git repository: run flows.submit in your checkout") from None


def head_commit(repo: Path) -> str:
    return sh(repo, "git", "rev-parse", "HEAD").strip()


def current_branch(repo: Path) -> str | None:
    return sh(repo, "git", "branch", "--show-current").strip() or None


def check_clean(repo: Path) -> None:
    """The worker runs the commit, not the working tree: refuse changes it would not see."""
    changed = [line[3:] for line in sh(repo, "git", "status", "--porcelain", "--untracked-files=normal").splitlines()]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise Refused(
            f"uncommitted changes ({shown}): the worker runs commits, not your working tree.\n"
            "  commit them:      git add -A && git commit -m 'what this run tries'\n"
            "  or set them aside: git stash --include-untracked"
        )


def remote_url(repo: Path, remote: str) -> str:
    try:
        return sh(repo, "git", "remote", "get-url", remote).strip()
    except CommandError:
        raise Refused(
            f"no git remote {remote!r} here: add the repository the worker fetches from, "
            f"`git remote add {remote} <git url>`, or name it with --remote"
        ) from None


def check_pushed(repo: Path, remote: str, sha: str) -> None:
    """The worker mirrors the remote's branches and tags: `sha` must be reachable from one of them."""
    tips = {line.split()[0] for line in sh(repo, "git", "ls-remote", "--heads", "--tags", remote).splitlines()}
    if sha in tips:
        return
    sh(repo, "git", "fetch", "--quiet", remote)  # the remote's branches may have moved past `sha`
    if sh(repo, "git", "branch", "--remotes", "--contains", sha, "--list", f"{remote}/*").strip():
        return
    branch = current_branch(repo)
    fix = (
        f"git push {remote} {branch}"
        if branch
        else f"git switch -c <new branch> && git push -u {remote} <new branch>   (HEAD is detached)"
    )
    raise Refused(
        f"commit {sha[:12]} is not on {remote} ({remote_url(repo, remote)}), where the worker "
        f"fetches it from: push it first:\n  {fix}"
    )


def check_in_commit(repo: Path, sha: str, path: str) -> None:
    """A profile the worker applies must be in the commit it checks out."""
    if subprocess.run(["git", "cat-file", "-e", f"{sha}:{path}"], cwd=repo, capture_output=True).returncode:
        raise Refused(f"{path} is not in commit {sha[:12]}: `git add {path} && git commit`, or check the path")


def pull_experiment(repo: Path, remote: str, name: str, with_data: bool = True) -> str:
    """`dvc exp pull` the experiment (git ref, and data unless the worker had no DVC remote to push
    it to); return its full ref.

    By name, so it works whatever HEAD is now; listing it would need `dvc exp list -A` once HEAD
    is no longer the experiment's base.
    """
    sh(repo, "dvc", "exp", "pull", *(() if with_data else ("--no-cache",)), remote, name)
    refs = [
        r for r in sh(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").split() if r.endswith(f"/{name}")
    ]
    if not refs:
        raise CommandError(f"dvc exp pull brought no ref for {name}")
    return refs[0]


def pull_results_branch(repo: Path, remote: str, branch: str, with_data: bool = True) -> None:
    """Switch to the results branch (a local branch tracking the remote's) and `dvc pull` its data
    (when the worker could push it)."""
    sh(repo, "git", "fetch", "--quiet", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
    sh(repo, "git", "switch", "--quiet", "--track", f"{remote}/{branch}")
    if with_data:
        sh(repo, "dvc", "pull")


def metrics_diff(repo: Path, base: str, rev: str | None = None) -> str:
    """`dvc metrics diff <base> [<rev>]`: the workspace (or an experiment) against `base`."""
    return sh(repo, "dvc", "metrics", "diff", base[:12], *([rev] if rev else []))  # short: a narrower table


def copy_experiment_files(repo: Path, ref: str, name: str, paths: list[str]) -> list[Path]:
    """Copy `paths` as the experiment `ref` has them (git or DVC cache alike) to GRIDS_HOME/<name>/.

    The workspace stays at the user's commit (that is what an experiment is); these copies are to
    look at. `dvc exp apply <name>` brings the whole experiment into the workspace instead. A file
    whose data did not come (no DVC remote on the worker) is left out.
    """
    from dvc.api import DVCFileSystem

    fs, copied = DVCFileSystem(str(repo), rev=ref), []
    for rel in paths:
        dest = repo / GRIDS_HOME / name / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(rel, str(dest))
        except FileNotFoundError:
            continue
        copied.append(dest.relative_to(repo))
    return copied
