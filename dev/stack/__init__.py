"""The local stack, one module a role; `dev/stack.py` is its entry point (usage in cli.py).

    settings.py    paths, ports, names, instance counts (VF_ variables)
    output.py      whole-line output shared by the stack's processes
    template.py    template.yaml: resources and their local names, functions' settings
    resources.py   tables, queues, buses and the event sink created in moto
    proxy.py       the proxy before moto: DynamoDB's limits, injected faults, capacity units
    throughput.py  AWS's per-key and per-service throughput limits, scaled (VF_SCALE)
    bridges.py     the functions' event sources: SQS → consumer and audience builds →
                   audiences, users stream → changes and audiences (event source
                   mappings), the audiences schedule (a ticker)
    supervisor.py  the processes: start, record, stop, stale-stack clean-up; up and run
    cli.py         `dev/stack.py up | run -- CMD | bridge … | stream-bridge … | ticker …`

The dev tools import what they use from here (`import stack`; `stack.Stack`, …).
"""
from .bridges import deliver
from .output import emit, log
from .resources import delete_messages, emulator_session, queue_depth, subscribe
from .settings import (ACCOUNT, API_PORT, API_URL, DEV_SCOPES, DEV_WORKSPACE, EMULATOR_PORT, EMULATOR_URL,
                       ENV_FILE, FAULT_PROXY_PORT, LOCAL, LOGS, REGION, ROOT, STACK_NAME)
from .supervisor import Stack, create_key, read_env_file, test_env, tool_env

__all__ = [
    "deliver", "emit", "log", "delete_messages", "emulator_session", "queue_depth", "subscribe",
    "ACCOUNT", "API_PORT", "API_URL", "DEV_SCOPES", "DEV_WORKSPACE", "EMULATOR_PORT", "EMULATOR_URL",
    "ENV_FILE", "FAULT_PROXY_PORT", "LOCAL", "LOGS", "REGION", "ROOT", "STACK_NAME",
    "Stack", "create_key", "read_env_file", "test_env", "tool_env",
]
