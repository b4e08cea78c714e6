"""What each attempt of the drill's load met, and who answered a 5xx.

The service's own errors are its contract envelope, `{"errors": [{"code": …}]}`: a 503
`unavailable` (a dependency failed, nothing was accepted) is what the faults should
bring; a 500 `internal` is a bug. API Gateway's own are `{"message": …}`: a 500 when the
invocation failed (the instance crashed or was killed, or the answer was unusable), a 503
when it timed out. The faithful front (dev/faithful) keeps those statuses and bodies and
says what happened in headers AWS does not send: `X-Faithful-Outcome` (Lambda's error
type) and `X-Faithful-Death` (why the runtime SIGKILLed the instance mid-event).

The drill's chaos SIGKILLs busy api instances: their clients get API Gateway's 500, as on
AWS when an invocation crashes. Those are counted as `killed`; any other 500 (the
service's `internal`, an instance that died by itself, a gateway 500 the front does not
explain) fails the drill.
"""
import json

EXIT_ERROR = "Runtime.ExitError"  # dev/faithful/runtime_api.py
TIMEOUT_ERROR = "Sandbox.Timedout"
KILLED = "500 killed"
# retry_causes' buckets, always present.
CAUSES = ("timeout", "409", "429", "killed", "500", "503")


def attempt_kind(status, headers, body):
    """One attempt as the counts and checks see it: "timeout" when nothing answered; the
    status (an int) for an answer under 500; for a 5xx a string, its status then who
    answered and why:

    - "500 killed": API Gateway's 500 for an instance the drill killed mid-event;
    - "500 crashed": API Gateway's 500 for an instance that exited by itself;
    - "503 function timeout": API Gateway's 503, the function ran past its timeout;
    - "500 gateway[ <error type>][ (<death>)]": any other answer of API Gateway's own;
    - "<status> <code>": the service's envelope ("500 internal", "503 unavailable");
    - "<status> unrecognised": a body of neither shape.
    """
    if status is None:
        return "timeout"
    if status < 500:
        return status
    try:
        document = json.loads(body or b"")
    except ValueError:
        document = None
    if isinstance(document, dict) and "errors" in document:
        errors = document["errors"]
        code = errors[0].get("code") if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
        return f"{status} {code or 'service'}"
    if not isinstance(document, dict) or "message" not in document:
        return f"{status} unrecognised"
    outcome, death = header(headers, "X-Faithful-Outcome"), header(headers, "X-Faithful-Death")
    if outcome == EXIT_ERROR and death == "killed":
        return f"{status} killed"
    if outcome == EXIT_ERROR and not death:
        return f"{status} crashed"
    if outcome == TIMEOUT_ERROR:
        return f"{status} function timeout"
    return f"{status} gateway" + (f" {outcome}" if outcome else "") + (f" ({death})" if death else "")


def header(headers, name):
    """A header's value whatever its case (urllib's headers or a plain dict), or None."""
    name = name.lower()
    return next((value for key, value in headers.items() if key.lower() == name), None)


def status_of(kind):
    """The HTTP status of an attempt's kind; None for a timeout."""
    if kind == "timeout":
        return None
    return kind if isinstance(kind, int) else int(kind.split(" ", 1)[0])


def retry_causes(attempts):
    """How many attempts met each cause of a retry: "timeout", "409", "429", "killed"
    (API Gateway's 500 for an instance the drill killed), "500" (every other 500: each
    fails the drill), "503", and any other 5xx under its status."""
    counts = dict.fromkeys(CAUSES, 0)
    for kind in attempts:
        cause = "killed" if kind == KILLED else "timeout" if kind == "timeout" else str(status_of(kind))
        if cause in counts or status_of(kind) >= 500:
            counts[cause] = counts.get(cause, 0) + 1
    return counts


def server_errors(attempts):
    """Every 5xx met, counted by kind (who answered and why)."""
    counts = {}
    for kind in attempts:
        if (status_of(kind) or 0) >= 500:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def unexplained_500s(attempts):
    """The 500s that fail the drill: every one but API Gateway's for a killed instance."""
    return [kind for kind in attempts if status_of(kind) == 500 and kind != KILLED]
