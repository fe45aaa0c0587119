"""CNI: the agent's side of the plugin protocol, and the plugin itself.

- ``plugin``: the standard-library-only executable the runtime runs (copied verbatim into the
  CNI bin directory by ``install``); it is also the one place the protocol's shared constants
  live (spec versions, error codes it reports, the frame limit, the default socket).
- ``spec``: a request and its network configuration, checked once; ``CniError`` and ``Code``.
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
