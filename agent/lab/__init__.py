"""The lab: a multi-node weave-py cluster on one machine, one network namespace per node.

- ``plan``: the names and addresses of a lab, derived from its name alone.
- ``underlay``: the node namespaces, wired to the lab's private underlay bridge(s).
- ``agents``: the agent processes (their command lines; starting and stopping them).
- ``cni``: the lab's container runtime (pods added through the installed CNI plugin).
- ``state``: the state file ``lab down`` reads to remove exactly what a lab made.
- ``lab``: ``Lab``, which puts those together and waits for the agents through their API.
- ``probe``: pod-to-pod reachability; ``run``: ``weave-py lab up`` / ``lab down``.
- ``outside``: a host on the underlay that is not a node (where pods' egress goes).
- ``image``: the weave-py image built from deploy/Containerfile (``image_base``: its local
  Debian base; ``lockfile``: the dependency locks; ``commands``: running the tools).
- ``kube/``: the cluster lab, a real Kubernetes cluster running weave-py from
  deploy/daemonset.yaml (``weave-py lab up --kubernetes``).
"""
