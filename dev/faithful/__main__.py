"""python3 -m faithful [--port 9000] --log PATH --function api=target/release/api
    [--function consumer=target/release/consumer] [--env-file .local/stack.env]
    [--min api=2] [--max api=8] [--timeout api=30] [--hold-ms 0-500]

Runs until SIGINT or SIGTERM."""
import argparse
import signal
import sys
import threading
from pathlib import Path

from .fleet import Fleet, FleetError, FunctionConfig


def pair(text):
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def hold_range(text):
    low, sep, high = text.partition("-")
    try:
        return int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX in ms, got {text!r}") from None


def read_env_file(path):
    pairs = (line.split("=", 1) for line in Path(path).read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value for key, value in pairs}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python3 -m faithful", description="Lambda-faithful local runtime.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--log", required=True, help="where every instance's output is appended")
    parser.add_argument("--function", type=pair, action="append", required=True, metavar="NAME=BINARY")
    parser.add_argument("--env-file", help="KEY=VALUE lines given to every function")
    parser.add_argument("--min", type=pair, action="append", default=[], metavar="NAME=N")
    parser.add_argument("--max", type=pair, action="append", default=[], metavar="NAME=N")
    parser.add_argument("--timeout", type=pair, action="append", default=[], metavar="NAME=SECONDS")
    parser.add_argument("--hold-ms", type=hold_range, default=(0, 0), metavar="MIN-MAX")
    parser.add_argument("--api-function", default="api", help="the function behind the API Gateway front")
    return parser.parse_args(argv)


def function_configs(args):
    env = read_env_file(args.env_file) if args.env_file else {}
    configs = {name: FunctionConfig(name, str(Path(binary).resolve()), dict(env))
               for name, binary in args.function}
    for option, field, kind in (("min", "min_instances", int), ("max", "max_instances", int),
                                ("timeout", "timeout_s", float)):
        for name, value in getattr(args, option):
            if name not in configs:
                raise SystemExit(f"--{option} {name}={value}: no --function {name}")
            setattr(configs[name], field, kind(value))
    return list(configs.values())


def main(argv):
    args = parse_args(argv)
    fleet = Fleet(function_configs(args), host=args.host, port=args.port, log_path=args.log,
                  api_function=args.api_function)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        fleet.start()
    except FleetError as e:
        print(f"[faithful] {e}", file=sys.stderr)
        return 1
    fleet.set_hold(*args.hold_ms)
    print(f"[faithful] serving on {fleet.url} (control: {fleet.url}/__fleet); logs in {args.log}",
          file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
