"""The cluster lab: a real Kubernetes cluster on this machine running weave-py from
deploy/daemonset.yaml (``weave-py lab up --kubernetes``), and what tests/kube runs on.

- ``plan``: names, addresses and paths of a cluster lab, from its name and size.
- ``underlay``: the bridge and gateway, the control plane's, the nodes' and the outside host's
  network namespaces.
- ``pki``, ``control``: the certificates and the control plane (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler) in a namespace of the caller's.
- ``holder``: the process holding a node's own mount and UTS namespaces; ``node``: a node's
  containerd, kubelet and kube-proxy; ``runtime``: containerd's configuration, ``ctr`` and the
  tasks on disk; ``images``: the lab's busybox image, made offline.
- ``processes``, ``state``: every process kept as (name, pid, marker) in ``kube.json``.
- ``cluster``: ``Cluster``, which builds, grows and removes all of it.
- ``workload``, ``rollout``, ``pods``: the manifest and the workload applied, the waits, the
  running pods and their network namespaces; ``checks``: what the lab proves; ``memory``;
  ``session``: ``lab up --kubernetes`` and its ``lab down``.
"""
