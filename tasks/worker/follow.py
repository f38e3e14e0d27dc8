"""The user's side of a worker run, through Prefect's API: start it, follow it, cancel it, read it.

flows.submit runs the deployment with `run_deployment(timeout=0)` and then polls the server: the
flow run's state, its log lines (the worker streams every git/dvc output line into them, see
commands.py) and, from DVC's own lines in that log, one progress line per stage. Polling, not a
websocket: it survives a server restart and needs nothing a firewall might block.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

RECORD_KEY = "facediff-worker-record"  # flows/worker.py publishes the RunRecord under this key
# DVC's lines about a stage, as the worker logs them (commands.run indents each output line).
STAGE_STARTED = re.compile(r"^Running stage '([^']+)'")
STAGE_SKIPPED = re.compile(r"^Stage '([^']+)' (didn't change|is cached)")
REPRO_ENDED = re.compile(r"^stages run: |^ERROR: failed to reproduce")

Print = Callable[[str], None]
LATE_HINT = " (no worker has taken it: is `prefect worker start --pool gpu` running?)"


class NoServer(RuntimeError):
    """No Prefect API configured, or the deployment is not on it."""


def api_url() -> str:
    """The configured Prefect API, or NoServer: without one Prefect would start a private
    temporary server, which no worker watches."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise NoServer(
            "PREFECT_API_URL is not set: point it at the server your GPU worker polls, e.g. "
            "`prefect config set PREFECT_API_URL=http://<server>:4200/api`"
        )
    return url


def read_deployment(name: str):
    """The deployment `flow/deployment`, or NoServer naming the command that creates it."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise NoServer(
                f"deployment {name!r} is not on {api_url()}: deploy it with "
                "`FACEDIFF_REPO_URL=<git url> FACEDIFF_WORKDIR=<folder> prefect deploy --all` "
                "(docs/worker.md)"
            ) from None


def start(deployment: str, parameters: dict):
    """A new flow run of `deployment` with `parameters` (merged with the deployment's), not awaited."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False)


def run_address(flow_run) -> str:
    """The flow run's page in the Prefect UI (its id when no UI address can be derived)."""
    from prefect.utilities.urls import url_for

    return url_for(flow_run) or f"flow run {flow_run.id} on {api_url()}"


@dataclass
class StageProgress:
    """One line per stage, from DVC's lines in the worker's log: started, skipped, done (with time)."""

    say: Print
    current: str | None = None
    since: datetime | None = None
    done: list[str] = field(default_factory=list)

    def feed(self, message: str, when: datetime) -> None:
        line = message.strip()
        if m := STAGE_STARTED.match(line):
            self.finish(when)
            self.current, self.since = m.group(1), when
            self.say(f"==> stage {self.current}: running (stage {len(self.done) + 1} of this run)")
        elif m := STAGE_SKIPPED.match(line):
            self.say(f"==> stage {m.group(1)}: up to date, not run")
        elif REPRO_ENDED.match(line):
            self.finish(when, failed=line.startswith("ERROR"))

    def finish(self, when: datetime, failed: bool = False) -> None:
        if self.current:
            seconds = (when - self.since).total_seconds()
            self.say(f"==> stage {self.current}: {'failed' if failed else 'done'} after {seconds:.0f} s")
            self.done.append(self.current)
            self.current = None


@dataclass
class LogCursor:
    """The flow run's log lines not yet shown, oldest first.

    Two processes log for a run (the worker and the flow run) and each sends its lines in batches,
    so a line may reach the server after a later one: each read goes back `margin` before the
    newest line shown and skips the ids already seen.
    """

    flow_run_id: UUID
    margin: timedelta = timedelta(seconds=10)
    newest: datetime | None = None
    seen: set = field(default_factory=set)

    def new_lines(self, client, page: int = 200) -> list:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
        from prefect.client.schemas.sorting import LogSort

        after = self.newest - self.margin if self.newest else None
        wanted = LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[self.flow_run_id]), timestamp=LogFilterTimestamp(after_=after)
        )
        fresh, offset = [], 0
        while True:
            logs = client.read_logs(log_filter=wanted, sort=LogSort.TIMESTAMP_ASC, limit=page, offset=offset)
            fresh += [log for log in logs if log.id not in self.seen]
            self.seen.update(log.id for log in logs)
            offset += len(logs)
            if len(logs) < page:
                break
        if fresh:
            self.newest = max([self.newest or fresh[0].timestamp] + [log.timestamp for log in fresh])
        return sorted(fresh, key=lambda log: log.timestamp)


def follow(
    flow_run_id: UUID,
    say: Print,
    show_log: bool = True,
    poll_s: float = 2.0,
    drain_s: float = 6.0,
    timeout_s: float | None = None,
):
    """Print the flow run's state changes, log lines and stage progress until it ends (or
    `timeout_s` passes); return the flow run as last read.

    Every `poll_s` (the worker sends its log lines in batches every ~2 s anyway); lines still in
    flight when the state turns final are waited for, up to `drain_s`.
    """
    from prefect import get_client

    cursor, progress, state = LogCursor(flow_run_id), StageProgress(say), None
    started, ended = time.monotonic(), None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            lines = cursor.new_lines(client)
            for log in lines:
                if show_log:
                    say(f"  {log.timestamp.astimezone():%H:%M:%S} {log.message}")
                progress.feed(log.message, log.timestamp)
            if run.state and run.state.name != state:
                state = run.state.name
                say(f"==> flow run {run.name}: {state}{LATE_HINT if state == 'Late' else ''}")
            if run.state and run.state.is_final():
                ended = ended or time.monotonic()
                if (not lines and time.monotonic() - ended >= drain_s / 3) or time.monotonic() - ended > drain_s:
                    progress.finish(run.state.timestamp, failed=not run.state.is_completed())
                    return run
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return run
            time.sleep(poll_s)


def cancel(flow_run_id: UUID) -> str:
    """Ask for the flow run's cancellation: the worker kills its process group (the dvc repro and
    the stage under it). A run no worker picked up yet is cancelled at once by the server."""
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(
            flow_run_id, State(type=StateType.CANCELLING, message="cancelled from flows.submit (Ctrl-C)")
        )
    return str(result.status.value)


def read_record(flow_run_id: UUID) -> dict | None:
    """The RunRecord the worker published for this run (flows/worker.py), or None."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[RECORD_KEY])
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    if not found:
        return None
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def failure_reason(run, record: dict | None) -> str:
    """One line: the worker's own (the failing stage and its reason) or else the state's message."""
    if record and record.get("failure"):
        return record["failure"]
    message = (run.state.message or run.state.name).strip()
    message = message.removeprefix("Flow run encountered an exception: ")
    return message.splitlines()[0] if message else run.state.name
