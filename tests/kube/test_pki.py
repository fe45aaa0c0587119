"""The lab cluster's PKI: who each certificate names, what the serving certificate covers, and
that making it again keeps what is there."""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.lab.kube.pki import COMPONENTS, Pki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def subject(cert: x509.Certificate) -> tuple[str, list[str]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return str(cn), [str(o) for o in orgs]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path / "pki")
    p.make("192.168.60.2", ["node1", "node2"])
    return p


def test_every_certificate_is_signed_by_the_ca(pki: Pki) -> None:
    ca = load(pki.ca_cert)
    for user in [*COMPONENTS, "node1", "node2"]:
        load(pki.cert(user)).verify_directly_issued_by(ca)
    load(pki.apiserver_cert).verify_directly_issued_by(ca)


def test_subjects_are_who_the_apiserver_must_see(pki: Pki) -> None:
    assert subject(load(pki.cert("admin"))) == ("admin", ["system:masters"])
    assert subject(load(pki.cert("apiserver-kubelet-client")))[1] == ["system:masters"]
    assert subject(load(pki.cert("kube-controller-manager"))) == (
        "system:kube-controller-manager",
        [],
    )
    assert subject(load(pki.cert("kube-scheduler"))) == ("system:kube-scheduler", [])
    assert subject(load(pki.cert("kube-proxy"))) == ("system:kube-proxy", [])
    assert subject(load(pki.cert("node2"))) == ("system:node:node2", ["system:nodes"])


def test_the_serving_certificate_names_the_apiserver_every_way(pki: Pki) -> None:
    names = (
        load(pki.apiserver_cert)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    ips = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert ips == {"192.168.60.2", "10.96.0.1", "127.0.0.1"}
    assert set(names.get_values_for_type(x509.DNSName)) == {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }


def test_making_again_keeps_everything(pki: Pki) -> None:
    before = {p.name: p.read_bytes() for p in pki.directory.iterdir()}
    pki.make("192.168.60.2", ["node1", "node2"])
    after = {p.name: p.read_bytes() for p in pki.directory.iterdir()}
    assert after == before


def test_a_new_address_reissues_only_the_serving_certificate(pki: Pki) -> None:
    ca, admin = pki.ca_cert.read_bytes(), pki.cert("admin").read_bytes()
    pki.make("192.168.61.2", [])
    names = (
        load(pki.apiserver_cert)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert ipaddress.IPv4Address("192.168.61.2") in names.get_values_for_type(x509.IPAddress)
    assert (pki.ca_cert.read_bytes(), pki.cert("admin").read_bytes()) == (ca, admin)


def test_a_node_joining_later_gets_its_own_certificate(pki: Pki) -> None:
    pki.add_node("node3")
    assert subject(load(pki.cert("node3"))) == ("system:node:node3", ["system:nodes"])
    with pytest.raises(ValueError, match="component"):
        pki.add_node("admin")


def test_keys_are_private(pki: Pki) -> None:
    for path in [pki.ca_key, pki.sa_key, pki.key("admin"), pki.key("node1")]:
        assert path.stat().st_mode & 0o077 == 0


def test_a_kubeconfig_embeds_the_server_ca_and_client(pki: Pki) -> None:
    path = pki.kubeconfig("node1", "https://192.168.60.2:6443")
    doc = json.loads(path.read_text())
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    assert cluster["server"] == "https://192.168.60.2:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == pki.ca_cert.read_bytes()
    assert base64.b64decode(user["client-certificate-data"]) == pki.cert("node1").read_bytes()
    assert base64.b64decode(user["client-key-data"]) == pki.key("node1").read_bytes()
    with pytest.raises(FileNotFoundError):
        pki.kubeconfig("nobody", "https://192.168.60.2:6443")
