"""The image's HEALTHCHECK: GET /healthz of the dim role that runs as PID 1, exit 0 if it answers
200. The gateway (and `dim up`, which starts one) serves it on DIM_GATEWAY_PORT; every other
long-running role on DIM_METRICS_PORT. A flag on the command line (--port, --gateway-port,
--metrics-port) wins over the environment, as it does for the process itself."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

GATEWAY_ROLES = {"gateway": "--port", "up": "--gateway-port"}


def command_line() -> list[str]:
    """PID 1's arguments after the `dim` program itself."""
    raw = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    args = [a.decode(errors="replace") for a in raw if a]
    for i, arg in enumerate(args):
        if Path(arg).name == "dim":
            return args[i + 1 :]
    return args


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in `args`, if given."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def port(args: list[str]) -> int:
    """The port PID 1's role serves /healthz on."""
    role = next((a for a in args if not a.startswith("-")), "")
    if role in GATEWAY_ROLES:
        given = flag(args, GATEWAY_ROLES[role]) or os.environ.get("DIM_GATEWAY_PORT") or "8000"
    else:
        given = flag(args, "--metrics-port") or os.environ.get("DIM_METRICS_PORT") or "9400"
    return int(given)


def main() -> int:
    """0 when /healthz answers 200 within 2 s, else 1 (with the reason on stderr)."""
    url = f"http://127.0.0.1:{port(command_line())}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
