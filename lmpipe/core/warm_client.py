"""Run a DVC stage in the warm stage server if one is serving, else in a fresh process.

`stages/run.sh` runs this file (as a script, `python -S`, standard library only: it must start in
milliseconds) as `warm_client.py NAME ARGS...` when LMPIPE_STAGE_SERVER names a socket. It sends
the server (lmpipe/core/warm_server.py) its stdin/stdout/stderr, working directory, environment
and `stages.NAME ARGS`, forwards SIGINT/SIGTERM/SIGHUP to the stage, and exits with the stage's
status. If the server is not there or refuses (another interpreter, another import-time
environment), it says why on stderr and runs `python -m stages.NAME ARGS` itself, exactly as
without a server.
"""

import json
import os
import signal
import socket
import sys


def fresh_process(stage: str, args: list, why: str) -> None:
    print(f"lmpipe stage server: {why}; running the stage in a fresh process", file=sys.stderr)
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", f"stages.{stage}", *args])


def read_line(replies) -> dict:
    line = replies.readline()
    if not line.endswith(b"\n"):
        raise ConnectionError("the stage server closed the connection")
    return json.loads(line)


def main() -> None:
    stage, args = sys.argv[1], sys.argv[2:]
    umask = os.umask(0)
    os.umask(umask)
    request = {"python": sys.executable, "module": f"stages.{stage}", "args": args,
               "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(os.environ["LMPIPE_STAGE_SERVER"])
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        replies = conn.makefile("rb")
        reply = read_line(replies)
    except (OSError, KeyError, ValueError) as exc:
        fresh_process(stage, args, f"not reachable ({exc})")
    if "refused" in reply:
        fresh_process(stage, args, f"refused: {reply['refused']}")

    def forward(sig, _frame) -> None:
        try:
            conn.sendall(f"{int(sig)}\n".encode())
        except OSError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        reply = read_line(replies)  # a forwarded signal interrupts the read, which resumes
    except (OSError, ValueError) as exc:
        print(f"lmpipe stage server: lost the stage ({exc})", file=sys.stderr)
        sys.exit(1)
    sys.exit(reply["exit"])


if __name__ == "__main__":
    main()
