"""The local stack: moto (DynamoDB + SQS + EventBridge) behind a proxy that enforces
DynamoDB's limits (and injects faults for tests), the four functions as release
binaries under the Lambda-faithful runtime (`dev/faithful`: frozen after each answer,
many instances), and their event sources as on AWS: SQS → consumer and audience builds →
audiences bridges with Lambda's partial-batch semantics, the users stream → changes and
audiences (a reader each, with its retry, bisect and on-failure semantics), and a
ticker for the audiences function's schedule; every event on the bus reaches a local
sink queue through a rule.

    stack.py up              run until Ctrl-C (what `make dev` does)
    stack.py run -- CMD...   start the stack (or reuse a running one), run CMD, stop
    stack.py bridge QUEUE_URL [FUNCTION [BATCH_SIZE [MOST_POLLERS]]]
                               an SQS → function bridge alone (default: consumer, 10, 2);
                               the stack starts one per queue
    stack.py stream-bridge STREAM_ARN FUNCTION=FAILURE_QUEUE_URL...
                               the users stream → functions bridge alone (the same)
    stack.py ticker FUNCTION=RULE_NAME[,DEAD_LETTER_QUEUE_URL]...
                               a scheduled event to each FUNCTION every VF_TICK_SECONDS,
                               one it cannot deliver to the queue (the same)

Tables and queues are created from template.yaml, so local and AWS share one schema.
VF_RUNTIME=watch runs the functions under `cargo lambda watch` instead (debug builds,
rebuilt on change, one never-frozen instance each: kinder than Lambda).
"""
import sys

from .bridges import bridge, stream_bridge, ticker
from .supervisor import run, up


def main(argv):
    command, args = argv[:1], argv[1:]
    if command == ["up"]:
        up()
        return 0
    if command == ["bridge"] and 1 <= len(args) <= 5:
        bridge(args[0], *args[1:2], *(int(n) for n in args[2:5]))
        return 0
    if command == ["stream-bridge"] and len(args) >= 2 and pairs(args[1:]):
        stream_bridge(args[0], pairs(args[1:]))
        return 0
    if command == ["ticker"] and args and pairs(args):
        ticker(pairs(args))
        return 0
    if command == ["run"] and "--" in argv:
        return run(argv[argv.index("--") + 1:])
    print(__doc__, file=sys.stderr)
    return 2


def pairs(args):
    """NAME=VALUE arguments as (name, value) pairs; None if one is not such a pair."""
    split = [arg.partition("=") for arg in args]
    if not all(name and sep and value for name, sep, value in split):
        return None
    return [(name, value) for name, _, value in split]
