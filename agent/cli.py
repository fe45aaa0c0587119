"""``weave-py``: the agent (``run``), its status views, rmpeer, and the lab."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeAlias
from urllib.parse import quote

from agent import client, config, config_sources, status
from agent.cni import install

log = logging.getLogger("weave-py")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weave-py", description=__doc__)
    sub = parser.add_subparsers()
    _run_command(sub)
    _api_commands(sub)
    _cni_commands(sub)
    ref = sub.add_parser("config-reference", help="print the configuration reference")
    ref.set_defaults(func=lambda a: print(config.reference()) or 0)
    _lab_commands(sub)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _run_command(sub: Commands) -> None:
    run = sub.add_parser("run", help="run the agent on this node")
    config_sources.add_arguments(run)
    run.set_defaults(func=cmd_run)


def _api_commands(sub: Commands) -> None:
    """Commands that ask the local agent over its API."""
    st = sub.add_parser("status", help="print Weave-style status from the local agent")
    st.add_argument("view", nargs="?", default="", choices=sorted(status.VIEWS))
    _api_arguments(st)
    st.set_defaults(func=cmd_status)

    rep = sub.add_parser("report", help="print the agent's status snapshot as JSON")
    _api_arguments(rep)
    rep.set_defaults(func=cmd_report)

    rm = sub.add_parser("rmpeer", help="take over the address ranges of a dead peer")
    rm.add_argument("name", help="the peer's name, as `weave-py status ipam` shows it")
    rm.add_argument("--socket", default=None, help="agent unix socket (default from WEAVE_SOCKET)")
    rm.set_defaults(func=cmd_rmpeer)


def _cni_commands(sub: Commands) -> None:
    cni = sub.add_parser("install-cni", help="install the CNI plugin and the network's conflist")
    cni.add_argument("--bin-dir", default=install.DEFAULT_BIN_DIR, help="plugin directory")
    cni.add_argument("--conf-dir", default=install.DEFAULT_CONF_DIR, help="conflist directory")
    cni.add_argument(
        "--socket",
        default=config_sources.from_environment("cni_socket", os.environ),
        help="the agent's CNI socket, written into the conflist",
    )
    cni.add_argument("--name", default=install.NETWORK_NAME, help="network name")
    cni.add_argument("--plugin", default="", help="the plugin binary to install; default "
                     "weave-py-net beside this weave-py (<sys.prefix>/bin)")  # fmt: skip
    cni.set_defaults(func=cmd_install_cni)


def _lab_commands(sub: Commands) -> None:
    lab = sub.add_parser("lab", help="a multi-node cluster on this machine")
    labsub = lab.add_subparsers()
    up = labsub.add_parser("up", help="build the lab and show pods reaching each other")
    up.add_argument("--name", default="lab", help="lab name (1-10 of [a-z0-9]); default lab")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--pods", type=int, default=2, help="pods per node")
    up.add_argument("--dir", help="lab directory (logs, sockets); default /tmp/weave-py-lab/NAME")
    up.add_argument(
        "--static",
        action="store_true",
        help="give every agent every peer and block (no gossip); default: one seed each",
    )
    up.add_argument(
        "--kubernetes",
        action="store_true",
        help="a real Kubernetes cluster (control plane, kubelet and containerd per node) "
        "running weave-py from deploy/daemonset.yaml and --pods pods per node",
    )
    up.add_argument(
        "--no-fastdp-nodes",
        type=_node_list,
        default=(),
        metavar="LIST",
        help="comma-separated nodes whose agents run with --no-fastdp (a mixed lab), e.g. 3",
    )
    up.set_defaults(func=cmd_lab_up)
    down = labsub.add_parser("down", help="remove everything the lab made (either kind)")
    down.add_argument("--name", default="lab")
    down.add_argument("--dir")
    down.set_defaults(func=cmd_lab_down)


def _node_list(text: str) -> tuple[int, ...]:
    """``"1,3"`` -> (1, 3): lab node numbers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want node numbers like 1,3") from None


def _api_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", default=None, help="agent unix socket (default from WEAVE_SOCKET)")
    p.add_argument("--http-addr", default=None, help="agent HTTP address instead of the socket")


def _request(args: argparse.Namespace, method: str, path: str) -> tuple[int, str]:
    """The agent's answer; mutating calls always go through its unix socket (the agent
    refuses them on its HTTP address)."""
    if method == "GET" and getattr(args, "http_addr", None):
        return client.request(method, path, http_addr=args.http_addr)
    default = config_sources.from_environment("socket_path", os.environ)
    socket_path = args.socket or default
    try:
        return client.request(method, path, socket_path=socket_path)
    except PermissionError:
        hint = " (or --http-addr 127.0.0.1:6784 for the views)" if method == "GET" else ""
        raise OSError(f"{socket_path} is root's: run as root{hint}") from None


def _get(args: argparse.Namespace, path: str) -> tuple[int, str]:
    return _request(args, "GET", path)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = config_sources.load(args, os.environ)
    except config.ConfigError as exc:
        print(f"weave-py: configuration error: {exc}", file=sys.stderr)
        return 2
    from agent import logs

    logs.setup(cfg.log_level, cfg.log_format)
    if cfg.netns:
        from overlay.netns import enter_netns

        enter_netns(cfg.netns)
    from agent import daemon

    try:
        _run_loop(daemon.main(cfg))
    except (OSError, ValueError) as exc:
        log.error("agent failed: %s", exc)
        return 1
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (a dependency: it costs the agents ~7% less CPU per GB moved in
    the lab than asyncio's own loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_status(args: argparse.Namespace) -> int:
    path = "/status" + (f"/{args.view}" if args.view else "")
    try:
        code, body = _get(args, path)
    except OSError as exc:
        print(f"weave-py: cannot reach the agent: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(body)
    return 0 if code == 200 else 1


def cmd_report(args: argparse.Namespace) -> int:
    try:
        code, body = _get(args, "/report")
    except OSError as exc:
        print(f"weave-py: cannot reach the agent: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(body)
    return 0 if code == 200 else 1


def cmd_rmpeer(args: argparse.Namespace) -> int:
    try:
        code, body = _request(args, "DELETE", "/peer/" + quote(args.name, safe=""))
    except OSError as exc:
        print(f"weave-py: cannot reach the agent: {exc}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    if code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        print(f"weave-py: rmpeer {args.name}: {error or f'agent answered {code}'}", file=sys.stderr)
        return 1
    taken = answer.get("taken") if isinstance(answer, dict) else None
    if taken is None:
        print(f"weave-py: rmpeer {args.name}: bad answer from agent: {body!r}", file=sys.stderr)
        return 1
    print(f"reclaimed {', '.join(taken)} from {args.name}" if taken else "nothing to reclaim")
    return 0


def cmd_install_cni(args: argparse.Namespace) -> int:
    try:
        written = install.install(
            args.bin_dir, args.conf_dir, args.socket, args.name, plugin=args.plugin
        )
    except OSError as exc:
        print(f"weave-py: install-cni: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    return 0


def cmd_lab_up(args: argparse.Namespace) -> int:
    from agent.lab import run

    if args.kubernetes and args.static:
        print("weave-py lab: --static and --kubernetes do not go together", file=sys.stderr)
        return 2
    if args.kubernetes and args.no_fastdp_nodes:
        print("weave-py lab: --no-fastdp-nodes is for the agents' lab, not --kubernetes",
              file=sys.stderr)  # fmt: skip
        return 2
    return run.up(args.name, args.nodes, args.pods, args.dir, not args.static, args.kubernetes,
                  args.no_fastdp_nodes)  # fmt: skip


def cmd_lab_down(args: argparse.Namespace) -> int:
    from agent.lab import run

    return run.down(args.name, args.dir)
