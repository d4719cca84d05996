"""Long operations as background jobs: a small thread pool, a job id the page polls, a TTL.

A conversion takes seconds (it rebuilds the model in an isolated child process), a verification
downloads artifacts, a promotion also runs a smoke test: each is submitted here and the request
returns the job id at once. The page polls ``GET /api/jobs/<id>`` for the state (``queued``,
``running``, ``done``, ``failed``), the current stage and the elapsed time. A job's output files
live in its private directory; a zip is handed out once and deleted after it was sent, and
everything a finished job left is deleted after the TTL.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlflow_safeflavor.ui.workspace import Workspace, new_id, valid_id

_logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One background operation and what it produced."""

    id: str
    kind: str
    title: str
    state: str = "queued"
    stage: str = "waiting for a free worker"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    download: Path | None = None
    download_name: str | None = None
    downloaded: bool = False
    dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """What the page polls."""
        end = self.finished or time.time()
        return {
            "id": self.id, "kind": self.kind, "title": self.title, "state": self.state, "stage": self.stage,
            "elapsed": round(end - (self.started or self.created), 1), "result": self.result, "error": self.error,
            "download_url": f"/api/jobs/{self.id}/download" if self.download is not None and not self.downloaded else None,
            "download_name": self.download_name, "downloaded": self.downloaded,
        }


class JobContext:
    """Handed to a job's work function: its directory, a way to report stages, path redaction."""

    def __init__(self, job: Job, workspace: Workspace) -> None:
        self.job, self._workspace = job, workspace
        self.names: dict[str, str] = {}

    @property
    def dir(self) -> Path:
        """The job's private directory (created on first use)."""
        if self.job.dir is None:
            self.job.dir = self._workspace.job_dir(self.job.id)
        return self.job.dir

    def stage(self, text: str) -> None:
        """Tell the page what the job is doing now."""
        self.job.stage = text

    def redact(self, value: Any) -> Any:
        """``value`` with every workspace path replaced by the name the person knows it by."""
        if isinstance(value, str):
            for path, name in sorted(self.names.items(), key=lambda kv: -len(kv[0])):
                value = value.replace(path, name)
            return value.replace(str(self._workspace.root), "<workspace>")
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(v) for v in value]
        return value


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The error as the page shows it: the library's own message, as the CLI prints it."""
    from mlflow.exceptions import MlflowException

    from mlflow_safeflavor.errors import SafeFlavorError

    if isinstance(exc, SafeFlavorError):
        out: dict[str, Any] = {"type": type(exc).__name__, "message": exc.message}
        for attr in ("failed", "findings"):
            if getattr(exc, attr, None):
                out[attr] = list(getattr(exc, attr))
        return out
    if isinstance(exc, MlflowException):
        return {"type": "MlflowException", "message": f"{exc.error_code}: {exc.message}"}
    return {"type": "InternalError", "message": f"{type(exc).__name__}: {str(exc)[:500]}"}


class JobRunner:
    """Runs work functions on a thread pool and keeps their outcome for polling."""

    def __init__(self, workspace: Workspace, *, workers: int, ttl_seconds: float, max_jobs: int | None = None) -> None:
        self.workspace, self.ttl, self.max_jobs = workspace, ttl_seconds, max_jobs
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="safeflavor-ui")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, title: str, work: Callable[[JobContext], dict[str, Any]],
               *, cleanup: Callable[[], None] | None = None) -> Job:
        """Queue ``work(ctx)``; its return value becomes the job's result. ``cleanup`` runs after, always.

        Raises UploadRefused (503) when ``max_jobs`` jobs are already queued or running; ``cleanup``
        then runs at once, so nothing the job would have owned stays behind.
        """
        from mlflow_safeflavor.ui.uploads import UploadRefused

        job = Job(id=new_id(), kind=kind, title=title)
        with self._lock:
            busy = sum(j.state in ("queued", "running") for j in self._jobs.values())
            if self.max_jobs is not None and busy >= self.max_jobs:
                if cleanup is not None:
                    cleanup()
                raise UploadRefused(503, "TEMPORARILY_UNAVAILABLE",
                                    f"{busy} jobs are queued or running, the most this page takes at once "
                                    "(MLFLOW_SAFEFLAVOR_UI_MAX_JOBS); try again when some have finished.")
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, work, cleanup)
        return job

    def _run(self, job: Job, work: Callable[[JobContext], dict[str, Any]], cleanup: Callable[[], None] | None) -> None:
        ctx = JobContext(job, self.workspace)
        job.state, job.started, job.stage = "running", time.time(), "starting"
        try:
            job.result = ctx.redact(work(ctx))
            job.state = "done"
        except Exception as exc:
            if describe_error(exc)["type"] == "InternalError":
                _logger.exception("safeflavor ui: job %s (%s) failed", job.id, job.kind)
            job.error = ctx.redact(describe_error(exc))
            job.state = "failed"
        finally:
            if cleanup is not None:
                try:
                    cleanup()
                except Exception:  # cleanup must not turn a result into an error
                    _logger.exception("safeflavor ui: cleanup after job %s failed", job.id)
            if job.download is None and job.dir is not None:
                self.workspace.remove(job.dir)  # nothing to hand out: drop the job's files now
                job.dir = None
            job.stage = "finished" if job.state == "done" else "failed"
            job.finished = time.time()

    def get(self, job_id: object) -> Job | None:
        """The job with this id, or None (also for ids of the wrong shape)."""
        if not valid_id(job_id):
            return None
        with self._lock:
            return self._jobs.get(job_id)  # type: ignore[arg-type]

    def take_download(self, job: Job) -> tuple[Path, str] | None:
        """The job's zip and its download name, once; the caller deletes the file after sending it."""
        with self._lock:
            if job.download is None or job.downloaded or not job.download.is_file():
                return None
            job.downloaded = True
            return job.download, job.download_name or "model.safeflavor.zip"

    def discard_download(self, job: Job) -> None:
        """Delete a job's files after its zip was sent."""
        self.workspace.remove(job.dir)
        job.dir = None

    def sweep(self) -> None:
        """Forget jobs finished longer than the TTL ago and delete what they left."""
        cutoff = time.time() - self.ttl
        with self._lock:
            stale = [j for j in self._jobs.values() if j.finished is not None and j.finished < cutoff]
            for j in stale:
                del self._jobs[j.id]
        for j in stale:
            self.workspace.remove(j.dir)

    def busy(self) -> int:
        """How many jobs are queued or running."""
        with self._lock:
            return sum(j.state in ("queued", "running") for j in self._jobs.values())

    def shutdown(self) -> None:
        """Stop taking jobs; running ones finish in the background (their files go with the workspace)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
