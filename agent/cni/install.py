"""``weave-py install-cni``: put the CNI plugin and the network's conflist where runtimes look.

The plugin (agent/cni/plugin.py, standard library only) is copied into the CNI bin directory
as ``weave-py-net``; the conflist (our plugin, then ``portmap`` for hostPort mappings) goes into
the CNI conf directory as ``10-weave-py.conflist``. Both are written to a temporary file in the
target directory and renamed into place, so a runtime never reads half a file, and nothing but
these two names is touched: other networks' files stay as they are.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from agent.cni import plugin
from agent.cni.plugin import DEFAULT_SOCKET
from overlay.ipam import store

PLUGIN_TYPE = "weave-py-net"
CONFLIST_NAME = "10-weave-py.conflist"
NETWORK_NAME = "weave-py"
CNI_VERSION = "1.0.0"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"


def plugin_source(python: str = "") -> bytes:
    """The plugin's text, with its first line naming the interpreter the runtime will use:
    the system Python, since the plugin needs nothing but the standard library. (From a
    container, pass the host's path, e.g. /usr/bin/python3.)"""
    with open(plugin.__file__, "rb") as f:
        text = f.read()
    body = text.split(b"\n", 1)[1] if text.startswith(b"#!") else text
    # -I: no environment or user site; -S: no site module (start-up time).
    return b"#!" + (python or python_for_plugin()).encode() + b" -IS\n" + body


def python_for_plugin() -> str:
    """The host's python3 the plugin's first line names (this interpreter if there is none)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def conflist(
    socket_path: str = DEFAULT_SOCKET, name: str = NETWORK_NAME, mtu: int = 0
) -> dict[str, Any]:
    """The network's conflist: our plugin (with the agent's socket), then portmap."""
    plugin: dict[str, Any] = {"type": PLUGIN_TYPE, "socket": socket_path}
    if mtu:
        plugin["mtu"] = mtu
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            plugin,
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def write_atomic(directory: str, name: str, data: bytes, mode: int) -> str:
    """Write ``directory/name`` by renaming a complete temporary file into place; its path."""
    path = os.path.join(directory, name)
    store.write_atomic(path, data, mode, dir_mode=0o755)
    return path


def install(
    bin_dir: str = DEFAULT_BIN_DIR,
    conf_dir: str = DEFAULT_CONF_DIR,
    socket_path: str = DEFAULT_SOCKET,
    name: str = NETWORK_NAME,
    mtu: int = 0,
    python: str = "",
) -> list[str]:
    """Install plugin and conflist; the paths written."""
    plugin = write_atomic(bin_dir, PLUGIN_TYPE, plugin_source(python), 0o755)
    text = json.dumps(conflist(socket_path, name, mtu), indent=2) + "\n"
    conf = write_atomic(conf_dir, CONFLIST_NAME, text.encode(), 0o644)
    return [plugin, conf]
