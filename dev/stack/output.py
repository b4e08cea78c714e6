"""How the stack's processes write their lines: whole lines, one write each."""
import sys
import threading

_OUTPUT_LOCK = threading.Lock()


def emit(line, stream=sys.stdout):
    """One whole line per write: the bridge's pollers share its log, and print() writes
    the text and its newline separately, so two threads could splice their lines."""
    with _OUTPUT_LOCK:
        stream.write(line + "\n")
        stream.flush()


def log(message):
    emit(f"[stack] {message}", sys.stderr)
