"""`python -m elastic.lab.cloud` (and `elastic lab cloud`): serve the emulator until SIGTERM or
Ctrl-C, after writing a clouds.yaml for every cloud it serves."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from elastic.lab.cloud.config import LabConfigError, load_config_file, parse_version
from elastic.lab.cloud.lab import LabCloud

PROG = "elastic lab cloud"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve a local OpenStack emulator on 127.0.0.1.")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free port)")
    parser.add_argument("--clouds-yaml", required=True, help="where to write the clouds.yaml for the served clouds")
    parser.add_argument("--max-microversion", help="compute microversion cap of every cloud, e.g. 2.12 or 2.96")
    parser.add_argument("--boot-seconds", type=float, help="BUILD -> ACTIVE delay of every cloud")
    parser.add_argument("--config", help="YAML with clouds: (content, quotas, faults, hooks); see docs/lab-cloud.md")
    return parser


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config from --config, always with a cloud named `lab`, the options laid over every cloud."""
    config = load_config_file(args.config) if args.config else {}
    clouds = config.get("clouds") or {}
    if not isinstance(clouds, dict):
        raise LabConfigError("clouds: must be a mapping of cloud name to settings")
    clouds = {name: dict(body or {}) for name, body in clouds.items()}
    clouds.setdefault("lab", {})
    for body in clouds.values():
        if args.max_microversion is not None:
            parse_version(args.max_microversion, "--max-microversion")
            body["max_microversion"] = args.max_microversion
        if args.boot_seconds is not None:
            body["boot_seconds"] = args.boot_seconds
    return {**config, "clouds": clouds}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s %(message)s")
    try:
        lab = LabCloud(build_config(args), host=args.host, port=args.port)
    except (LabConfigError, ValueError) as exc:
        source = args.config if args.config and not str(exc).startswith(str(args.config)) else None
        print(f"{PROG}: {source + ': ' if source else ''}{' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    try:
        lab.start()
    except OSError as exc:
        print(f"{PROG}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        path = lab.write_clouds_yaml(args.clouds_yaml)
        print(f"lab cloud serving {lab.url} clouds={','.join(lab.clouds)} clouds_yaml={path}", flush=True)
        stop.wait()
    finally:
        lab.stop()
    return 0
