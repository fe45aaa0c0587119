"""CNI: the agent's side of the plugin protocol, and the plugin itself.

- ``plugin/``: the executable the runtime runs, ``weave-py-net``: a static Go program (standard
  library only; scripts/build-plugin) that checks the request, opens the pod's netns and hands
  both to the agent. ``install`` copies it into the CNI bin directory.
- ``spec``: a request and its network configuration, checked once; ``CniError`` and ``Code``;
  the protocol's constants the plugin shares (versions, commands, codes, the frame limit, the
  default socket).
- ``result``: what ADD answers and CHECK expects, in the configuration's cniVersion.
- ``seams``: the two seams the daemon builds for the handler, ``PodAddresses`` (IPAM) and
  ``PodNetwork`` (veth, address, routes), and the one table mapping the agent's refusals to
  CNI codes.
- ``handler``: runs each command against the seams.
- ``delegate``: a delegated IPAM plugin, executed from CNI_PATH.
- ``network``: the kernel ``PodNetwork`` (overlay/pods.py on a thread of its own).
- ``server``: the unix socket the plugin forwards requests (and the pod's netns) to.
- ``install``: ``weave-py install-cni``.
"""
