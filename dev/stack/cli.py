"""The local stack: moto (DynamoDB + SQS + EventBridge) behind a proxy that enforces
DynamoDB's limits (and injects faults for tests), the three functions as release
binaries under the Lambda-faithful runtime (`dev/faithful`: frozen after each answer,
many instances), an SQS → consumer bridge with Lambda's partial-batch semantics, and a
users stream → changes bridge with its retry, bisect and on-failure semantics; change
events reach a local sink queue through a rule on the bus.

    stack.py up              run until Ctrl-C (what `make dev` does)
    stack.py run -- CMD...   start the stack (or reuse a running one), run CMD, stop
    stack.py bridge QUEUE_URL  the SQS → consumer bridge alone (the stack starts it)
    stack.py stream-bridge STREAM_ARN FAILURE_QUEUE_URL
                               the users stream → changes bridge alone (the same)

Tables and queues are created from template.yaml, so local and AWS share one schema.
VF_RUNTIME=watch runs the functions under `cargo lambda watch` instead (debug builds,
rebuilt on change, one never-frozen instance each: kinder than Lambda).
"""
import sys

from .bridges import bridge, stream_bridge
from .supervisor import run, up


def main(argv):
    if argv[:1] == ["up"]:
        up()
        return 0
    if argv[:1] == ["bridge"] and len(argv) == 2:
        bridge(argv[1])
        return 0
    if argv[:1] == ["stream-bridge"] and len(argv) == 3:
        stream_bridge(argv[1], argv[2])
        return 0
    if argv[:1] == ["run"] and "--" in argv:
        return run(argv[argv.index("--") + 1:])
    print(__doc__, file=sys.stderr)
    return 2
