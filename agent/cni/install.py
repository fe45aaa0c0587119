"""``weave-py install-cni``: put the CNI plugin and the network's conflist where runtimes look.

The plugin is a static binary (agent/cni/plugin, built by scripts/build-plugin next to the
``weave-py`` console script: ``<sys.prefix>/bin/weave-py-net``, in the virtualenv and in the
image); it needs nothing on the node. It is copied into the CNI bin directory as
``weave-py-net``; the conflist (our plugin, then ``portmap`` for hostPort mappings) goes into
the CNI conf directory as ``10-weave-py.conflist``. Both are written to a temporary file in the
target directory and renamed into place, so a runtime never reads half a file, and nothing but
these two names is touched: other networks' files stay as they are.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

from agent.cni.spec import DEFAULT_SOCKET
from overlay.ipam import store

PLUGIN_TYPE = "weave-py-net"
CONFLIST_NAME = "10-weave-py.conflist"
NETWORK_NAME = "weave-py"
CNI_VERSION = "1.0.0"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"


def default_plugin() -> str:
    """Where the plugin binary is built and shipped: beside this interpreter's scripts."""
    return os.path.join(sys.prefix, "bin", PLUGIN_TYPE)


def plugin_binary(path: str = "") -> bytes:
    """The plugin's bytes, from ``path`` or the default place; an ``OSError`` that says how to
    build it when it is not there."""
    source = path or default_plugin()
    try:
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "CNI plugin not built (scripts/build-plugin builds it)", source
        ) from None


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
    plugin: str = "",
) -> list[str]:
    """Install the plugin binary (``plugin``, default ``default_plugin()``) and the conflist;
    the paths written."""
    binary = write_atomic(bin_dir, PLUGIN_TYPE, plugin_binary(plugin), 0o755)
    text = json.dumps(conflist(socket_path, name, mtu), indent=2) + "\n"
    conf = write_atomic(conf_dir, CONFLIST_NAME, text.encode(), 0o644)
    return [binary, conf]
