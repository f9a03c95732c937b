"""Several jobs in one output folder, also from several nodes of a cluster that share the filesystem.

Every process registers a record `jobs/<host>.<pid>.<nonce>.json` (host, pid and whatever the caller adds,
e.g. its config), and a background thread refreshes the record's modification time every `timeout / 10`
seconds: its heartbeat. Work is claimed by creating `claims/<name>`, already holding the claimant's record
name, in one step (a hard link of a written temporary, `create_exclusively`): exactly one process wins, also
over NFS, and no reader sees a claim without its owner. A claim is stale, and is taken over, when the
claimant's record is gone, its heartbeat is older than `timeout`, or it ran on this host and its process no
longer exists. So a job killed on this host blocks nothing, and one killed on another node blocks its claims
for `timeout` seconds. Only on a filesystem without hard links is a claim created empty and then written; one
left empty (its claimant killed in between) holds while another job is alive to be writing it, for `timeout`
seconds at most. Ages are read on the filesystem's clock (the modification time of a file touched just
before), so the nodes' clocks need not agree.

Taking over the claim of a job that was only stalled for longer than `timeout` can make two processes do the
same piece of work; for deterministic work (images from per-image seeds) that costs time, not correctness.
"""

import json
import logging
import os
import secrets
import socket
import threading
import time

from guided_diffusion.runtime.files import atomic_write_text, create_exclusively, is_temporary, remove_if_present

log = logging.getLogger(__name__)

JOBS = "jobs"
CLAIMS = "claims"
DEFAULT_TIMEOUT = 600.0


def pid_exists(pid):
    """Whether process `pid` exists on this host (a process of another user counts)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderJobs:
    """This process's membership in the jobs working in folder `root`: its record, heartbeat and claims."""

    def __init__(self, root, timeout=DEFAULT_TIMEOUT):
        if not timeout > 0:
            raise ValueError(f"the claim timeout must be positive, got {timeout}")
        self.root = root
        self.timeout = float(timeout)
        self.jobs_dir = os.path.join(root, JOBS)
        self.claims_dir = os.path.join(root, CLAIMS)
        self.host = socket.gethostname()
        self.name = None  # this process's record file, once registered
        self.record = None
        self._claims = set()
        self._stop = threading.Event()
        self._thread = None

    @property
    def poll_seconds(self):
        """How often to look again at work other jobs hold."""
        return min(2.0, self.timeout / 10)

    # ------------------------------------------------------------------------------------------------
    # This process

    def register(self, details=None):
        """Write this process's record and start its heartbeat. Idempotent."""
        if self.name is not None:
            return self.name
        os.makedirs(self.jobs_dir, exist_ok=True)
        os.makedirs(self.claims_dir, exist_ok=True)
        self.record = {"host": self.host, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                       **(details or {})}
        self.name = f"{self.host}.{os.getpid()}.{secrets.token_hex(4)}.json"
        self._write_record()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="folder-jobs-heartbeat", daemon=True)
        self._thread.start()
        return self.name

    def _record_path(self, name=None):
        return os.path.join(self.jobs_dir, name or self.name)

    def _write_record(self):
        atomic_write_text(self._record_path(), json.dumps(self.record))  # readers never see half a record

    def _heartbeat(self):
        while not self._stop.wait(self.timeout / 10):
            try:
                os.utime(self._record_path())
            except FileNotFoundError:  # pruned while this process was stalled: it is alive after all
                self._write_record()
            except OSError as error:
                log.warning("cannot refresh the heartbeat of %s: %s", self._record_path(), error)

    def close(self):
        """Stop the heartbeat, give up this process's claims and remove its record."""
        if self.name is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # Also the claims on file under this name but not yet in the set: a stop signal can land between
        # writing a claim and noting it.
        mine = set(self._claims) | {c for c in self._claim_names() if (self._owner(c) or ("",))[0] == self.name}
        for name in sorted(mine):
            self.release(name)
        try:
            os.unlink(self._record_path())
        except FileNotFoundError:
            pass
        self.name = self.record = self._thread = None

    def now(self):
        """The filesystem's current time: the modification time of a file touched just now."""
        if self.name is not None:
            try:
                os.utime(self._record_path())
                return os.stat(self._record_path()).st_mtime
            except OSError:
                pass
        return time.time()

    # ------------------------------------------------------------------------------------------------
    # Other processes

    def records(self):
        """{record name: (record, heartbeat time)} of every process registered in the folder."""
        out = {}
        try:
            names = os.listdir(self.jobs_dir)
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            try:
                beat = os.stat(self._record_path(name)).st_mtime
                with open(self._record_path(name)) as f:
                    out[name] = (json.load(f), beat)
            except (OSError, ValueError):  # removed meanwhile, or not ours to read
                continue
        return out

    def is_alive(self, name, now=None):
        """Whether the process of record `name` is running (see the module docstring)."""
        if name == self.name:
            return True
        try:
            beat = os.stat(self._record_path(name)).st_mtime
            with open(self._record_path(name)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return False
        return self._alive(record, beat, now)

    def _alive(self, record, beat, now=None):
        now = self.now() if now is None else now
        if now - beat > self.timeout:
            return False
        return record.get("host") != self.host or pid_exists(record.get("pid"))

    def live_jobs(self):
        """[(record name, record, seconds since its heartbeat)] of the other processes alive in the folder."""
        now = self.now()
        return [(name, record, max(0.0, now - beat)) for name, (record, beat) in sorted(self.records().items())
                if name != self.name and self._alive(record, beat, now)]

    def prune(self):
        """Remove the records, claims and claim temporaries of processes that are gone."""
        now = self.now()
        for name, (record, beat) in self.records().items():
            if name != self.name and not self._alive(record, beat, now):
                remove_if_present(self._record_path(name))
        for claim in self._claim_names():
            if self.holder(claim) is None:
                remove_if_present(os.path.join(self.claims_dir, claim))
        # A claim's temporary lives for the moment of its link; an older one, or any with no job alive, is
        # what a killed claimant left.
        temporaries = [n for n in self._claim_names(hidden=True) if is_temporary(n)]
        if temporaries:
            alone = not self.live_jobs()
            for name in temporaries:
                path = os.path.join(self.claims_dir, name)
                try:
                    if alone or now - os.stat(path).st_mtime > self.timeout:
                        remove_if_present(path)
                except FileNotFoundError:
                    continue

    # ------------------------------------------------------------------------------------------------
    # Claims

    def _claim_names(self, hidden=False):
        """The claims in the folder (and, with `hidden`, only the dot files beside them: temporaries)."""
        try:
            return [n for n in os.listdir(self.claims_dir) if n.startswith(".") == hidden]
        except FileNotFoundError:
            return []

    def _owner(self, claim):
        """(record name or "" while its claimant is still writing it, claim file time), or None if no claim."""
        path = os.path.join(self.claims_dir, claim)
        try:
            with open(path) as f:
                owner = f.read().strip()
            return owner, os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def holder(self, claim):
        """The record name of the live process holding `claim`, or None (unclaimed, or its claimant is gone)."""
        found = self._owner(claim)
        if found is None:
            return None
        owner, stamp = found
        if not owner:  # created a moment ago and not yet written, or its claimant died right then: only a
            # live job can be writing it (claimants register first), so with none it is stale at once
            being_written = self.now() - stamp <= self.timeout and self.live_jobs()
            return "<being claimed>" if being_written else None
        return owner if self.is_alive(owner) else None

    def claim(self, claim):
        """Try to claim `claim` for this process; True on success (also if it already holds it). A claim of a
        process that is gone is taken over."""
        if self.name is None:
            raise RuntimeError("register() this process before claiming work")
        path = os.path.join(self.claims_dir, claim)
        for _ in range(2):
            if create_exclusively(path, self.name.encode()):
                self._claims.add(claim)
                return True
            holder = self.holder(claim)
            if holder == self.name:
                self._claims.add(claim)
                return True
            if holder is not None:
                return False
            log.info("claim %s is stale (its job is gone): taking it over", path)
            remove_if_present(path)
        return False

    def holders(self, claims):
        """[(record, seconds since its heartbeat, time of its first claim, number of claims)] of the live
        processes holding any of `claims`, for saying what a job waits for."""
        now, records, held = self.now(), self.records(), {}
        for claim in claims:
            found = self._owner(claim)
            if found is None or found[0] not in records or found[0] == self.name:
                continue
            owner, stamp = found
            record, beat = records[owner]
            if self._alive(record, beat, now):
                first, count = held.get(owner, (stamp, 0))
                held[owner] = (min(first, stamp), count + 1)
        return [(records[owner][0], max(0.0, now - records[owner][1]), first, count)
                for owner, (first, count) in sorted(held.items())]

    def release(self, claim):
        """Give up `claim` if this process holds it."""
        self._claims.discard(claim)
        found = self._owner(claim)
        if found is not None and found[0] == self.name:
            remove_if_present(os.path.join(self.claims_dir, claim))


def describe(record, age=None):
    """`host:pid (Slurm job j, rank r of w, started ..., last heartbeat N s ago)` for messages."""
    parts = []
    if record.get("slurm_job"):
        parts.append(f"Slurm job {record['slurm_job']}")
    if "rank" in record and "world_size" in record:
        parts.append(f"rank {record['rank']} of {record['world_size']}")
    if record.get("started"):
        parts.append(f"started {record['started']}")
    if age is not None:
        parts.append(f"last heartbeat {age:.0f} s ago")
    return f"{record.get('host')}:{record.get('pid')}" + (f" ({', '.join(parts)})" if parts else "")

