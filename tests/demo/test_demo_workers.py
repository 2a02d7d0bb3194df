"""The demo's worker processes do not outlive the demo process."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# a parent that starts a spawn pool exactly as the demo does, prints the worker's pid, then waits on a long task
PARENT = textwrap.dedent("""
    import concurrent.futures as futures, multiprocessing, os, sys, time
    from results.demo import exit_with_parent

    def pid_then_sleep(_):
        print(os.getpid(), flush=True)
        time.sleep(120)

    if __name__ == "__main__":
        with futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            list(pool.map(pid_then_sleep, [0]))
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by init) counts as gone
        return f.read().split(") ", 1)[1][0] != "Z"


def test_tokenizer_workers_exit_when_the_demo_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        worker = int(proc.stdout.readline())
        assert _alive(worker)
        proc.send_signal(signal.SIGKILL)  # no cleanup in the parent: only the worker's own watch can end it
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"worker {worker} outlived its killed parent"
    finally:
        proc.kill()
