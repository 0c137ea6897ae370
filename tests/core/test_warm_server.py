"""A stage run in the warm stage server does what it does in a fresh `python -m stages.NAME`.

Each test starts its own server (lmpipe/core/warm_server.py) and runs `sh stages/run.sh NAME`
in a project copy, once with LMPIPE_STAGE_SERVER naming the server and once without, and
compares: what the stage sees (directory, import path, arguments, stdin, environment, random
state, thread count), its exit status and output, a model it trains, what happens when its
client is killed, and when the server refuses a request.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_pipeline import TINY, _merge
from tests.project_copy import ROOT, copy_project, pipeline_env, run_checked

PROBE = '''
import json, os, random, sys
import numpy, torch
import lmpipe
if sys.argv[1:] == ["crash"]:
    raise ValueError("the probe crashed")
if sys.argv[1:] == ["exit"]:
    print("leaving", flush=True)
    sys.exit(5)
if sys.argv[1:] == ["sleep"]:
    open("probe.pid", "w").write(str(os.getpid()))
    import time
    time.sleep(120)
print(json.dumps({
    "name": __name__, "argv": sys.argv[1:], "cwd": os.getcwd(), "path": sys.path[:2],
    "lmpipe": lmpipe.__file__, "stdin": sys.stdin.read(), "mark": os.environ.get("MARK"),
    "threads": torch.get_num_threads(), "umask": os.umask(0o22),
}))
print(json.dumps({"ppid": os.getppid(), "random": random.random(),
                  "numpy": float(numpy.random.random()), "torch": torch.rand(1).item()}))
'''


@pytest.fixture()
def workspace(tmp_path) -> Path:
    work = copy_project(tmp_path / "project", ("dvc.yaml", "stages", "lmpipe"))
    (work / "stages" / "probe.py").write_text(PROBE)
    return work


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(socket path, server pid) of a server started for these tests, stopped after them."""
    folder = tmp_path_factory.mktemp("server")
    path, ready = folder / "warm.sock", folder / "ready"
    env = {k: v for k, v in os.environ.items() if k != "LMPIPE_STAGE_SERVER"}
    proc = subprocess.Popen([sys.executable, "-m", "lmpipe.core.warm_server", str(path),
                             "--ready", str(ready)], env=env)
    deadline = time.monotonic() + 120
    while not ready.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield path, proc.pid
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert not path.exists()


def _run(work: Path, args: list[str], socket: Path | None, stdin: str = "",
         **env_changes: str) -> subprocess.CompletedProcess:
    env = pipeline_env(work.parent)
    env.pop("LMPIPE_STAGE_SERVER", None)
    if socket is not None:
        env["LMPIPE_STAGE_SERVER"] = str(socket)
    env.update(env_changes)
    return subprocess.run(["sh", "stages/run.sh", *args], cwd=work, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_a_stage_sees_what_a_fresh_process_sees(workspace, server):
    socket, server_pid = server
    runs = {}
    for where, path in (("fresh", None), ("warm", socket)):
        result = _run(workspace, ["probe", "a=1", "b"], path, stdin="to the stage\n",
                      MARK=where)
        assert result.returncode == 0, result.stderr
        assert "stage server" not in result.stderr  # not refused
        seen, process = (json.loads(line) for line in result.stdout.splitlines())
        runs[where] = seen, process
    (fresh, fresh_process), (warm, warm_process) = runs["fresh"], runs["warm"]
    assert warm_process["ppid"] == server_pid != fresh_process["ppid"]
    assert warm["mark"] == "warm" and fresh["mark"] == "fresh"
    # the workspace's own lmpipe, not the server's (which never imported it)
    assert warm["lmpipe"] == fresh["lmpipe"] == str(workspace / "lmpipe" / "__init__.py")
    for key in ("name", "argv", "cwd", "path", "stdin", "threads", "umask"):
        assert warm[key] == fresh[key], key
    assert warm["argv"] == ["a=1", "b"] and warm["path"][0] == str(workspace)
    # the global generators are seeded from the OS in each process, as fresh ones are
    second = json.loads(_run(workspace, ["probe"], socket).stdout.splitlines()[1])
    for generator in ("random", "numpy", "torch"):
        assert second[generator] != warm_process[generator], generator


def test_thread_counts_follow_the_stage_environment(workspace, server):
    socket, _ = server
    threads = {}
    for where, path in (("fresh", None), ("warm", socket)):
        result = _run(workspace, ["probe"], path, OMP_NUM_THREADS="1")
        threads[where] = json.loads(result.stdout.splitlines()[0])["threads"]
    assert threads == {"fresh": 1, "warm": 1}


def test_exit_status_output_and_tracebacks_are_the_stages(workspace, server):
    socket, _ = server
    for path in (None, socket):
        left = _run(workspace, ["probe", "exit"], path)
        assert (left.returncode, left.stdout) == (5, "leaving\n")
        crash = _run(workspace, ["probe", "crash"], path)
        assert crash.returncode == 1
        assert crash.stderr.strip().endswith("ValueError: the probe crashed")
        assert 'stages/probe.py", line 6' in crash.stderr


def test_a_request_the_server_cannot_serve_runs_in_a_fresh_process(workspace, server):
    socket, server_pid = server
    # the Hub's offline switch is read when transformers is imported: the server's is "1"
    result = _run(workspace, ["probe"], socket, HF_HUB_OFFLINE="0")
    assert result.returncode == 0
    assert "refused: environment differs from the server's in HF_HUB_OFFLINE" in result.stderr
    assert json.loads(result.stdout.splitlines()[1])["ppid"] != server_pid
    # a fixed hash seed cannot be honoured in a fork; PYTHONHASHSEED=random means unset (Dask)
    pinned = _run(workspace, ["probe"], socket, PYTHONHASHSEED="6640")
    assert "refused: environment differs from the server's in PYTHONHASHSEED" in pinned.stderr
    drawn = _run(workspace, ["probe"], socket, PYTHONHASHSEED="random")
    assert "stage server" not in drawn.stderr
    assert json.loads(drawn.stdout.splitlines()[1])["ppid"] == server_pid
    gone = _run(workspace, ["probe"], socket.parent / "no-server.sock")  # no socket: no client
    assert gone.returncode == 0 and "stage server" not in gone.stderr


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 120
    while not (path.is_file() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_client_takes_its_stage_with_it(workspace, server, sig):
    socket, _ = server
    env = pipeline_env(workspace.parent)
    env["LMPIPE_STAGE_SERVER"] = str(socket)
    client = subprocess.Popen(["sh", "stages/run.sh", "probe", "sleep"], cwd=workspace, env=env)
    stage_pid = _wait_for(workspace / "probe.pid")
    assert stage_pid != client.pid  # the stage runs in the server's child
    client.send_signal(sig)
    # SIGTERM is forwarded (the stage dies of it, the client reports it as a shell would);
    # a SIGKILLed client cannot forward anything: the server sees its connection close
    assert client.wait(timeout=30) == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert _gone(stage_pid), "the stage outlived its client"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_trained_in_the_server_is_the_fresh_process_model_bit_for_bit(tmp_path, server):
    socket, _ = server
    base = copy_project(tmp_path / "base", ("dvc.yaml", "stages", "lmpipe"))
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env(tmp_path)
    env.pop("LMPIPE_STAGE_SERVER", None)
    for stage in ("prepare", "tokenize"):
        run_checked(["sh", "stages/run.sh", stage], base, env)
    models = {}
    for where, path in (("fresh", None), ("warm", socket)):
        work = tmp_path / where
        subprocess.run(["cp", "-a", str(base), str(work)], check=True)
        result = _run(work, ["train", "student"], path)
        assert result.returncode == 0 and "stage server" not in result.stderr, result.stderr
        models[where] = _sha256(work / "runs/student/model/model.safetensors")
        curve = [json.loads(line) for line in (work / "runs/student/metrics.jsonl").open()]
        models[where + " losses"] = [r["loss"] for r in curve if "loss" in r]
    assert models["warm"] == models["fresh"]
    assert models["warm losses"] == models["fresh losses"] and len(models["warm losses"]) == 3
