"""Shared bits of the Python suites: settings from the environment, result
bookkeeping, and the closing RESULT line that run.sh reads."""

import os
import sys
import threading
import time

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))
USER = os.environ.get("PGUSER", "postgres")
PASSWORD = os.environ.get("PGPASSWORD", "")
DBNAME = os.environ.get("PGDATABASE", USER)
CLIENTS = int(os.environ.get("CLIENTS", "40"))
ITERS = int(os.environ.get("ITERS", "50"))
TARGET = os.environ.get("TARGET", "?")
# PHASES=a,b runs only those phases of a suite (for debugging).
PHASES = [p for p in os.environ.get("PHASES", "").split(",") if p]

# Time zones with fixed offsets in mid-January 2024 (seconds east of UTC, as
# extract(timezone from ...) gives them). SHOW TimeZone returns the name as set.
TZ_OFFSETS = {
    "UTC": 0,
    "Europe/Paris": 3600,
    "America/New_York": -18000,
    "Asia/Tokyo": 32400,
    "Asia/Kolkata": 19800,
    "Australia/Sydney": 39600,
    "America/Los_Angeles": -28800,
    "Etc/GMT+3": -10800,
    "Etc/GMT-14": 50400,
    "Pacific/Auckland": 46800,
    "Africa/Cairo": 7200,
    "Asia/Kathmandu": 20700,
    "America/St_Johns": -12600,
    "Europe/Moscow": 10800,
    "Asia/Shanghai": 28800,
    "Etc/GMT+11": -39600,
    "Atlantic/Azores": -3600,
}
TZ_NAMES = sorted(TZ_OFFSETS)


def tz_pair(cid):
    """Two different time zones for client cid."""
    a = TZ_NAMES[cid % len(TZ_NAMES)]
    b = TZ_NAMES[(cid * 7 + 3) % len(TZ_NAMES)]
    if b == a:
        b = TZ_NAMES[(cid + 1) % len(TZ_NAMES)]
    return a, b


class CheckFailed(AssertionError):
    pass


def check(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


class Results:
    """Counts checks and collects failures from many threads or tasks."""

    def __init__(self, suite):
        self.suite = suite
        self.lock = threading.Lock()
        self.failures = []
        self.checks = 0
        self.phases = []
        self.t0 = time.monotonic()
        self.info = ""  # shown in the RESULT line, e.g. the driver's version

    def ok(self, n=1):
        with self.lock:
            self.checks += n

    def fail(self, phase, cid, exc):
        state = getattr(exc, "sqlstate", None)
        msg = f"[{phase}] client {cid}: {type(exc).__name__}: {exc}".strip()
        if state:
            msg += f" (SQLSTATE {state})"
        with self.lock:
            self.failures.append(msg)
            sys.stdout.write("FAIL " + msg + "\n")
            sys.stdout.flush()

    def phase_done(self, phase, started, clients):
        secs = time.monotonic() - started
        with self.lock:
            nfail = sum(1 for f in self.failures if f.startswith(f"[{phase}]"))
        print(f"phase {phase}: {clients} clients, {nfail} failed clients, {secs:.1f}s", flush=True)
        self.phases.append(phase)

    def finish(self):
        secs = time.monotonic() - self.t0
        if self.failures:
            print(f"{len(self.failures)} client failure(s); first ones:")
            for f in self.failures[:10]:
                print("  " + f)
            print(
                f"RESULT fail {len(self.failures)} client failure(s), {self.checks} checks ok, "
                f"via {TARGET}{self.info}, {secs:.1f}s: {self.failures[0][:300]}",
                flush=True,
            )
            sys.exit(1)
        print(
            f"RESULT ok {self.checks} checks, {CLIENTS} clients x {ITERS} iterations, "
            f"phases {'+'.join(self.phases)}, via {TARGET}{self.info}, {secs:.1f}s",
            flush=True,
        )
        sys.exit(0)
