"""A real Kubernetes control plane for the cluster lab and the tests: its PKI (pki.py) and its
processes (control.py: etcd, kube-apiserver, kube-controller-manager, kube-scheduler in a network
namespace of the caller's)."""
