"""A warm interpreter for DVC stages: import torch and transformers once, fork a child per stage.

A stage process spends most of a small run importing torch and transformers (about 7 s of a tiny
stage's 10 s here). This server imports them once, listens on a Unix socket, and for each request
from `lmpipe/core/warm_client.py` (which `stages/run.sh` runs when `LMPIPE_STAGE_SERVER` names
the socket) forks a child that becomes the stage: the client's stdin/stdout/stderr (passed as
file descriptors), working directory, environment, umask and arguments, then
`python -m stages.NAME ARGS` run in it with the import path a fresh `python -m` would have.

What the child runs is what a fresh process would run:
- Only third-party modules are preloaded, and the child forgets the lmpipe modules the server
  runs on, so a workspace's own code (a project copy, a `dvc exp run --temp` folder) is imported
  from that workspace, as before.
- The preloaded modules read some environment variables at import time (HF_HUB_OFFLINE, thread
  counts, ...). A request whose values for those differ from the server's is refused, and the
  client runs the stage in a fresh process instead.
- Random state is reseeded in the child from the OS, as a fresh process seeds it: torch's
  default generator, Python's and numpy's global ones.
- No torch computation runs in the server, so no thread pool exists at fork time.

The server is single-threaded (forking a process with threads risks locks held by them) and
binds a Unix socket created with mode 0600; only the user who started it can connect.

`python -m lmpipe.core.warm_server SOCKET` serves until SIGTERM/SIGINT;
`python -m lmpipe.core.warm_server -- CMD ARGS` serves while CMD runs with LMPIPE_STAGE_SERVER
set, and exits with CMD's status (`make run` runs `dvc repro` that way).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lmpipe import OFFLINE_DEFAULTS

# What a stage imports that costs seconds; lmpipe itself is never preloaded (see above).
PRELOAD = (
    "numpy", "yaml", "safetensors.torch", "tokenizers", "duckdb", "torch",
    "transformers", "transformers.models.llama.modeling_llama",
    "transformers.models.mamba.modeling_mamba",
    "transformers.models.mamba2.modeling_mamba2",
    "transformers.models.recurrent_gemma.modeling_recurrent_gemma",
    "transformers.generation.utils",
)

# Variables the preloaded modules (or the interpreter) read once at start-up: a request must
# agree with the server on each of them.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "OMP_",
                        "MKL_", "OPENBLAS_", "CUDA_", "TOKENIZERS_", "PYTHONHASHSEED",
                        "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE")
# Thread counts are applied in the child (torch.set_num_threads) instead: a sweep point runs
# with its own.
APPLIED_IN_CHILD = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# read only by downloads, which never happen here (lm_eval's import sets HF_XET_HIGH_PERFORMANCE)
IRRELEVANT_OFFLINE = ("HF_XET_",)
ENV_VAR = "LMPIPE_STAGE_SERVER"
MAX_MESSAGE = 1 << 20


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The entries of `env` that the preloaded modules read at import time."""
    return {k: v for k, v in env.items()
            if k.startswith(IMPORT_TIME_PREFIXES) and k not in APPLIED_IN_CHILD
            and not k.startswith(IRRELEVANT_OFFLINE)}


def _stage_import_env(env: dict[str, str]) -> dict[str, str]:
    """The import-time environment a stage started with `env` has once `import lmpipe` has
    filled in its offline defaults (before anything else is imported)."""
    found = import_time_env({**OFFLINE_DEFAULTS, **env})
    # Python's own meaning: PYTHONHASHSEED=random draws the hash seed as if it were unset
    if found.get("PYTHONHASHSEED") == "random":
        del found["PYTHONHASHSEED"]
    return found


# taken before the preload: importing torch sets some of these variables itself
_SERVER_IMPORT_ENV = _stage_import_env(dict(os.environ))


def _interpreter_path() -> list[str]:
    """sys.path without what this process's own start added: its first entry (script directory
    or working directory) and its PYTHONPATH."""
    ours = {p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    return [p for p in sys.path[1:] if p not in ours]


_INTERPRETER_PATH = _interpreter_path()


def preload() -> None:
    """Import the heavy third-party modules every stage needs (PRELOAD), once, in the server."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional architecture or library: the stage imports it itself
            pass


def _refusal(request: dict) -> str | None:
    """Why this server cannot run `request` as a fresh process would, or None."""
    # the interpreter's path, not its target: two venvs share one python binary
    if os.path.abspath(request.get("python", "")) != os.path.abspath(sys.executable):
        return f"it runs {sys.executable}, the stage wants {request.get('python')}"
    ours, theirs = _SERVER_IMPORT_ENV, _stage_import_env(request["env"])
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        return "environment differs from the server's in " + ", ".join(differ)
    return None


def _become_stage(request: dict, fds: list[int]) -> None:
    """In the forked child: take over the client's stdio, directory and environment, run the
    stage module as `__main__`, and exit with its status. Never returns."""
    import random
    import runpy

    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        for sig in (signal.SIGTERM, signal.SIGCHLD):  # SIGPIPE stays ignored, as python sets it
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        unbuffered = bool(request["env"].get("PYTHONUNBUFFERED"))
        # the streams of the process, as the interpreter makes them at start-up
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1 if unbuffered or os.isatty(1) else -1,  # noqa: SIM115
                          closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False,  # noqa: SIM115
                          errors="backslashreplace")
        # `python -m` puts the working directory first, then PYTHONPATH, then the interpreter's
        # own entries (the server's first entry was its own script directory or working dir)
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *extra, *_INTERPRETER_PATH]
        sys.argv = ["-m", *request["args"]]
        # the server itself is lmpipe code (this module): the stage imports its workspace's own
        for name in [m for m in sys.modules if m.split(".")[0] in ("lmpipe", "stages")]:
            del sys.modules[name]
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            torch.seed()  # a fresh process seeds it from the OS too
            # what a fresh process's OpenMP reads: OMP_NUM_THREADS, else the usable CPUs
            threads = request["env"].get("OMP_NUM_THREADS") or request["env"].get("MKL_NUM_THREADS")
            torch.set_num_threads(int(threads) if threads and threads.isdigit() and int(threads) > 0
                                  else len(os.sched_getaffinity(0)))
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except BaseException:  # noqa: BLE001 - a stage's crash is reported as python would
            import traceback
            traceback.print_exc()
            code = 1
        import atexit
        atexit._run_exitfuncs()  # what interpreter shutdown would run (wandb, tqdm, loggers)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe must not change the status
                stream.flush()
        os._exit(code & 0xFF)


class Server:
    """The accept/fork/reap loop. One connection is one stage run: the request, then optional
    signal numbers from the client (forwarded to the child); the reply is the exit status."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.children: dict[int, socket.socket] = {}
        self.stopping = False

    def close(self) -> None:
        for pid in list(self.children):
            _kill(pid, signal.SIGTERM)
        self.listener.close()
        self.path.unlink(missing_ok=True)

    def serve_once(self, timeout: float = 0.1) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                conn, _ = self.listener.accept()
                self._start(conn)
            else:
                self._from_client(key.fileobj, key.data)
        self._reap()

    def _start(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
            while not message.endswith(b"\n"):  # a long environment comes in several reads
                more = conn.recv(MAX_MESSAGE)
                if not more:
                    raise ValueError("the request ended before its newline")
                message += more
            request = json.loads(message)
        except (OSError, ValueError) as exc:
            _reply(conn, {"refused": f"bad request: {exc}"})
            return
        reason = _refusal(request) if len(fds) == 3 else "expected stdin, stdout and stderr"
        if reason:
            for fd in fds:
                os.close(fd)
            _reply(conn, {"refused": reason})
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the stage keeps none of the server's sockets (a client waits for EOF)
            for other in (self.listener, conn, *self.children.values()):
                other.close()
            self.selector.close()
            _become_stage(request, fds)
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    def _from_client(self, conn: socket.socket, pid: int) -> None:
        data = conn.recv(64)
        if not data:  # the client is gone (killed): its stage must not outlive it
            _kill(pid, signal.SIGKILL)
            self.selector.unregister(conn)
            return
        for line in data.split(b"\n"):
            if line.strip().isdigit():
                _kill(pid, int(line))

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            _reply(conn, {"exit": code if code >= 0 else 128 - code})


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reply(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass
    conn.close()


def serve(path: Path, command: list[str] | None = None, ready: Path | None = None) -> int:
    """Preload, listen on `path`, and serve: until SIGTERM/SIGINT, or while `command` runs (with
    LMPIPE_STAGE_SERVER=path in its environment; returns its exit status)."""
    server = Server(path)  # listening first: a client that comes early waits in the backlog
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    proc = None
    if command:
        proc = subprocess.Popen(command, env={**os.environ, ENV_VAR: str(path)})
    preload()
    if ready is not None:
        ready.write_text(str(os.getpid()))
    try:
        while not stop:
            server.serve_once()
            if proc is not None and proc.poll() is not None:
                return proc.returncode
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait()
        server.close()
    return 0


@contextlib.contextmanager
def stage_server() -> Iterator[None]:
    """Stages started inside the block (`dvc repro`, `dvc exp run`, from this process or its
    children) run in a warm server: the one LMPIPE_STAGE_SERVER already names, else one started
    for the block and stopped after it."""
    if os.environ.get(ENV_VAR) and Path(os.environ[ENV_VAR]).is_socket():
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="lmpipe-warm-"))
    path = folder / "stage.sock"
    proc = subprocess.Popen([sys.executable, "-m", "lmpipe.core.warm_server", str(path)])
    while not path.is_socket() and proc.poll() is None:  # bound within a second, before preload
        time.sleep(0.02)
    previous = os.environ.get(ENV_VAR)
    if path.is_socket():  # else the stages run in fresh processes, as without a server
        os.environ[ENV_VAR] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(
        prog="python -m lmpipe.core.warm_server",
        usage="%(prog)s [--ready FILE] (SOCKET | [SOCKET] -- CMD ARGS...)",
        description="Serve DVC stages from one warm interpreter: SOCKET serves until stopped; "
                    "-- CMD ARGS serves while CMD runs (with LMPIPE_STAGE_SERVER set) and exits "
                    "with its status.")
    parser.add_argument("socket", nargs="?", type=Path, help="Unix socket path to listen on")
    parser.add_argument("--ready", type=Path, help="file written (the server's pid) once serving")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.socket is None and not command:
        parser.error("give a SOCKET to serve on, or -- CMD to run under the server")
    if args.socket is None:
        folder = Path(tempfile.mkdtemp(prefix="lmpipe-warm-"))
        try:
            return serve(folder / "stage.sock", command, args.ready)
        finally:
            folder.rmdir()
    return serve(args.socket, command or None, args.ready)


if __name__ == "__main__":
    sys.exit(main())
