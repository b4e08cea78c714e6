"""A stack killed without warning (SIGKILL, as a supervisor's grace period ends) leaves
nothing running, and the next start is not refused. Starts a second stack on ports of
its own; needs the release binaries and vfctl built (run by dev/integration.sh)."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"VF_EMULATOR_PORT": "4620", "VF_API_PORT": "9120", "VF_FAULT_PROXY_PORT": "4621"}
# How long the killed stack's processes may take to be gone.
EXIT_BOUND_S = 60


def processes_of(marker):
    """Pids of live processes whose command line or environment mention `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in seen and state != "Z":
            found.append(int(entry.name))
    return found


def described(pids):
    """{pid: its command line} of the pids still there."""
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:
            pass
    return found


def start_stack(local_dir):
    env = dict(os.environ, VF_LOCAL_DIR=local_dir, VF_API_MIN="1", **PORTS)
    stack = subprocess.Popen([sys.executable, str(ROOT / "dev" / "stack.py"), "up"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in stack.stdout:
        if "Press Ctrl-C" in line:
            return stack
        if time.monotonic() > deadline:
            break
    stack.kill()
    raise AssertionError("the stack did not start")


class StackCleanUp(unittest.TestCase):
    def test_nothing_survives_a_sigkilled_stack(self):
        with tempfile.TemporaryDirectory() as local_dir:
            stack = start_stack(local_dir)
            # moto and the bridge inherit VF_LOCAL_DIR; function instances get the proxy
            # as AWS_ENDPOINT_URL. The NUL ends the value: the stack this test runs in
            # has instances whose Runtime API port (127.0.0.1:46213…) starts the same.
            proxy = f"AWS_ENDPOINT_URL=http://127.0.0.1:{PORTS['VF_FAULT_PROXY_PORT']}\0"
            of_stack = lambda: set(processes_of(local_dir) + processes_of(proxy))
            self.assertGreaterEqual(len(of_stack() - {stack.pid}), 4, "moto, bridge and function instances run")
            os.kill(stack.pid, signal.SIGKILL)
            stack.wait()
            # Each is sent SIGKILL at once (parent-death signal); on a loaded machine
            # one can take seconds to be gone. A process that is never sent it stays:
            # the bound only has to outlast the slowest exit.
            deadline = time.monotonic() + EXIT_BOUND_S
            while of_stack() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(described(of_stack()), {}, "processes of the killed stack still run")
            # The next start of the same checkout is not refused.
            again = start_stack(local_dir)
            again.send_signal(signal.SIGINT)
            self.assertEqual(again.wait(timeout=30), 0)


if __name__ == "__main__":
    unittest.main()
