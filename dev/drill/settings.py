"""What the drill runs: its size, seed and deadline (VF_DRILL_ variables), its
workspaces, the stack's URLs it talks to, and where its report goes."""
import os
import sys
import time

import stack

CLIENTS = int(os.environ.get("VF_DRILL_CLIENTS", "8"))
UPSERTS = int(os.environ.get("VF_DRILL_UPSERTS", "50"))
USERS = int(os.environ.get("VF_DRILL_USERS", "20"))
SEED = int(os.environ.get("VF_DRILL_SEED", "7"))
DEADLINE = time.monotonic() + int(os.environ.get("VF_DRILL_DEADLINE", "600"))
# Low enough that eight clients run into it: 429s are part of the drill.
RATE_LIMIT = 15
CLIENT_TIMEOUT = 2.5
# Longer than any injected fault, so that an accepted upsert is never given up on.
GIVE_UP_AFTER = 120
WORKSPACE, OTHER_WORKSPACE = "drill-a", "drill-b"
# A user of the load whose audience memberships cannot be read while the load runs (a
# standing fault): the audiences function parks it, the drill redrives it afterwards.
PARKED_USER = "user-3"
USERS_URL = f"{stack.API_URL}/api/v1/users"
OUT = stack.ROOT / "target" / "drill"
REPORT = stack.ROOT / "docs" / "reliability.md"
FAULTS_URL = f"http://127.0.0.1:{stack.FAULT_PROXY_PORT}/__faults"
FLEET_URL = f"{stack.API_URL}/__fleet"
# Instances stay frozen and out of service for a random time after each answer.
HOLD_MS = (0, 1000)
# This share of a client's requests erase the user instead of upserting it.
DELETE_SHARE = 0.08
# After this share of 202s the client sends the same request again at once: it must be
# a replay (another instance answers it while the first is frozen), never a 409.
ECHO_SHARE = 0.3


def log(message):
    print(f"[drill] {message}", file=sys.stderr, flush=True)
