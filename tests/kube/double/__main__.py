"""Run the double on its own: ``python -m tests.kube.double --port P --kubeconfig PATH``.

Prints one line, ``listening on <url>``, once the kubeconfig is written and the server accepts requests,
then serves until SIGINT or SIGTERM. Test hooks are reachable over HTTP under ``/_double/`` (see control.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .server import ApiDouble
from .settings import KubeletSettings


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.kube.double", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig")
    parser.add_argument("--namespace", default="default", help="the kubeconfig context's namespace")
    parser.add_argument("--history-size", type=int, default=1000, help="watch events kept for resuming")
    parser.add_argument("--token", default="kaltstart-double-token", help="bearer token clients must send")
    parser.add_argument("--start-delay-s", type=float, default=0.0, help="seconds before a pod's process starts")
    return parser.parse_args(argv)


async def _serve(arguments: argparse.Namespace) -> None:
    settings = KubeletSettings(start_delay_s=arguments.start_delay_s)
    api = ApiDouble(port=arguments.port, history_size=arguments.history_size, token=arguments.token, kubelet=settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with api:
        api.write_kubeconfig(arguments.kubeconfig, arguments.namespace)
        print(f"listening on {api.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_arguments(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
