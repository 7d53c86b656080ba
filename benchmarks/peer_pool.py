"""The PyTorch peer's processes, as compare_peer.py drives them (no JAX here, so a test can start
them without touching JAX's device count).

``PeerWorker``: one persistent benchmarks/peer_mbrl.py process (JSON lines on its stdin / stdout),
torch's default threads or ``threads`` of them. ``PeerPool``: P one-thread workers run at once,
each on its share of the work; a repetition's time is the wall of the slowest (bench_common.
concurrent_wall of the workers' own monotonic stamps), its model-steps the sum of the shares'.
``Peer``: whether the peer venv is there, and starting workers / pools that record their failures
in the report instead of crashing the benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_common import concurrent_wall  # noqa: E402

PEER_SCRIPT = os.path.join(HERE, "peer_mbrl.py")
PEER_MISSING = "peer: not installed (run benchmarks/setup_peer_venv.sh)"
DEFAULT_PEER_PYTHON = os.path.join(ROOT, ".peer-venv", "bin", "python")


def log(*parts):
    """A progress line on stderr (stdout carries only the JSON)."""
    print(*parts, file=sys.stderr, flush=True)


def core_count() -> int:
    """The cores this process may use (its affinity mask), else the CPU count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class PeerError(RuntimeError):
    """The peer worker answered with an error or went away."""


class PeerWorker:
    """A persistent peer_mbrl.py process: JSON-line requests on stdin, replies on stdout."""

    def __init__(self, python, threads=0, wait=True):
        """Start the worker (``threads`` ≥ 1: that many torch threads, and the OpenMP / MKL pools
        sized to match, as one would launch a one-thread worker; 0: torch's default) and, with
        ``wait``, wait for its ready line (``start_s``: process start + import)."""
        self.start = time.perf_counter()
        self.threads = threads
        env = dict(os.environ)
        cmd = [python, "-u", PEER_SCRIPT]
        if threads:
            cmd += ["--threads", str(threads)]
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, env=env)
        self.hello, self.start_s = None, None
        if wait:
            self.wait_ready()

    def wait_ready(self):
        """Read the ready line (once)."""
        if self.hello is None:
            self.hello = self.receive()
            self.start_s = time.perf_counter() - self.start
        return self.hello

    def receive(self):
        """The next reply line as a dict."""
        line = self.proc.stdout.readline()
        if not line:
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = None
            raise PeerError(f"peer worker exited (rc {rc}); see its stderr above")
        return json.loads(line)

    def send(self, req):
        """Write one request (setup requests carry this worker's thread count)."""
        if req.get("cmd") == "setup" and self.threads:
            req = {**req, "threads": self.threads}
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:  # the worker died (e.g. out of memory)
            raise PeerError(f"peer worker gone: {exc}") from exc

    def reply(self):
        """The next reply; a failed one raises PeerError."""
        out = self.receive()
        if not out.get("ok"):
            raise PeerError(out.get("error", "peer error"))
        return out

    def request(self, **req):
        """Send one request and return its reply; a failed reply raises PeerError."""
        self.send(req)
        return self.reply()

    def close(self):
        """Ask the worker to quit; kill it if it does not."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
        except Exception:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class PeerPool:
    """``size`` workers of ``threads`` torch threads each, driven at once: a request goes to every
    worker before any reply is read, so their work overlaps."""

    def __init__(self, python, size, threads=1):
        """Start every worker, then wait for all (their imports overlap)."""
        self.workers = [PeerWorker(python, threads, wait=False) for _ in range(size)]
        try:
            for w in self.workers:
                w.wait_ready()
        except Exception:
            self.close()
            raise
        self.start_s = max(w.start_s for w in self.workers)

    @property
    def pids(self):
        """The workers' process ids, as they report them."""
        return [w.hello["pid"] for w in self.workers]

    def request_all(self, reqs):
        """Send ``reqs[i]`` to worker i, all before reading; the replies in worker order."""
        for w, req in zip(self.workers, reqs, strict=True):
            w.send(req)
        return [w.reply() for w in self.workers]

    def run(self, variant, rep):
        """One concurrent repetition: every worker runs ``variant`` on its share. ``seconds`` is
        the wall of the slowest (first start to last end); ``model_steps`` (training) the sum."""
        replies = self.request_all([{"cmd": "run", "variant": variant, "rep": rep}] * len(self.workers))
        out = {"seconds": concurrent_wall(replies), "pids": [r["pid"] for r in replies],
               "torch_threads": [r["torch_threads"] for r in replies],
               "per_worker_s": [r["seconds"] for r in replies]}
        # What the stagger of the workers' starts adds to the slowest worker's own time.
        out["stagger_s"] = out["seconds"] - max(out["per_worker_s"])
        if all("model_steps" in r for r in replies):
            out["model_steps"] = sum(r["model_steps"] for r in replies)
            out["models"] = sum(r["models"] for r in replies)
            out["model_steps_per_s"] = out["model_steps"] / out["seconds"]
        return out

    def close(self):
        """Close every worker."""
        for w in self.workers:
            w.close()


class Peer:
    """Whether and how to reach the peer; ``start()`` / ``start_pool()`` return workers or None
    (the failure noted in the report)."""

    def __init__(self, args, report):
        """Peer status from the options: skipped, not installed, or available."""
        self.args = args
        self.report = report
        self.info = {"python": args.peer_python, "status": "ok", "script": os.path.relpath(PEER_SCRIPT, ROOT)}
        if args.no_peer:
            self.info["status"] = "peer: skipped (--no-peer)"
        elif not os.path.exists(args.peer_python):
            self.info["status"] = PEER_MISSING
        report["peer"] = self.info

    @property
    def available(self):
        """True while the peer can be started."""
        return self.info["status"] == "ok"

    def _started(self, question, make):
        """``make()``, or None with the failure noted."""
        if not self.available:
            return None
        try:
            return make()
        except Exception as exc:  # e.g. a venv without mbrl: peer keys null, not a crash
            self.note(question, f"peer failed to start: {exc}")
            if "No module named" in str(exc) or isinstance(exc, PeerError):
                self.info["status"] = f"{PEER_MISSING}; start failed: {exc}"
            return None

    def start(self, question, threads=None):
        """A fresh worker (``--peer-threads`` unless ``threads``) for one question, or None."""
        threads = self.args.peer_threads if threads is None else threads
        worker = self._started(question, lambda: PeerWorker(self.args.peer_python, threads))
        if worker is not None:
            self.info.setdefault("torch", worker.hello.get("torch"))
            if not threads:
                self.info.setdefault("torch_threads", worker.hello.get("torch_threads"))
        return worker

    def start_pool(self, question, size):
        """``size`` one-thread workers for one question, or None."""
        return self._started(question, lambda: PeerPool(self.args.peer_python, size, threads=1))

    def note(self, question, text):
        """Record a peer problem of one question."""
        self.report.setdefault("notes", []).append(f"{question}: {text[-1500:]}")
        log(f"[{question}] {text[-1500:]}")
