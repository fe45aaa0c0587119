"""The PKI of a lab cluster: a CA, the apiserver's serving certificate, a client certificate per
component and per node, the service-account key pair, and kubeconfigs that embed them.

Files, all in one directory: ``ca.crt``/``ca.key``, ``apiserver.crt``/``.key``,
``<user>.crt``/``.key`` for every client (the components of ``COMPONENTS`` and one per node,
named after the node), ``sa.key``/``sa.pub``, and ``<user>.kubeconfig``. Keys are ECDSA P-256
(fast to make, accepted by Kubernetes for TLS and service-account tokens) and written 0600.

``make`` is idempotent: it creates what is missing and keeps what is there, so a lab that is
brought up again reuses its CA and every kubeconfig handed out stays valid; only the serving
certificate is issued again when it does not name the apiserver's address. Every file is
written to a temporary name and renamed, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
SKEW = datetime.timedelta(hours=1)  # certificates are valid from an hour back (clock skew)
SERVICE_IP = "10.96.0.1"  # the ``kubernetes`` Service: first address of the service range
DNS_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# client name -> (common name, organization): who the apiserver sees
COMPONENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
    "kube-proxy": ("system:kube-proxy", None),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}

Key = ec.EllipticCurvePrivateKey


class Pki:
    """The certificates and keys of one cluster, kept in ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.ca_cert = self.directory / "ca.crt"
        self.ca_key = self.directory / "ca.key"
        self.apiserver_cert = self.directory / "apiserver.crt"
        self.apiserver_key = self.directory / "apiserver.key"
        self.sa_key = self.directory / "sa.key"
        self.sa_pub = self.directory / "sa.pub"

    def make(self, apiserver_ip: str, nodes: list[str]) -> None:
        """Everything the control plane and ``nodes`` need; what exists is kept."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            self._make_ca()
        if not self._serves(apiserver_ip):
            self._make_serving(apiserver_ip)
        for user, (common_name, organization) in COMPONENTS.items():
            self._ensure_client(user, common_name, organization)
        for name in nodes:
            self.add_node(name)
        if not (self.sa_key.exists() and self.sa_pub.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            _write(self.sa_key, _private_bytes(key), secret=True)
            _write(self.sa_pub, _public_bytes(key))

    def add_node(self, name: str) -> None:
        """The client certificate of node ``name`` (a kubelet: ``system:node:NAME``)."""
        if name in COMPONENTS:
            raise ValueError(f"a node may not be named {name!r}: that is a component's name")
        self._ensure_client(name, f"system:node:{name}", "system:nodes")

    def cert(self, user: str) -> Path:
        """The client certificate of ``user`` (a component's name or a node's)."""
        return self.directory / f"{user}.crt"

    def key(self, user: str) -> Path:
        """The private key of ``user``'s client certificate."""
        return self.directory / f"{user}.key"

    def kubeconfig(self, user: str, server: str) -> Path:
        """A kubeconfig for ``user`` at ``server`` (``https://ip:6443``), certificates embedded."""
        if not self.cert(user).exists():
            raise FileNotFoundError(f"no client certificate for {user!r} in {self.directory}")
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {
                "server": server, "certificate-authority-data": _b64(self.ca_cert)}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": _b64(self.cert(user)),
                "client-key-data": _b64(self.key(user))}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
            "current-context": "lab",
        }  # fmt: skip
        path = self.directory / f"{user}.kubeconfig"
        _write(path, json.dumps(document, indent=2).encode(), secret=True)  # JSON is YAML
        return path

    # -- issuing -------------------------------------------------------------------------------

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weave-py-lab-ca")])
        builder = _builder(name, name, key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(_usage(cert_sign=True), True)
        cert = builder.sign(key, hashes.SHA256())
        _write(self.ca_key, _private_bytes(key), secret=True)
        _write(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM))

    def _serves(self, ip: str) -> bool:
        """Whether the serving certificate exists and names ``ip``."""
        if not (self.apiserver_cert.exists() and self.apiserver_key.exists()):
            return False
        cert = x509.load_pem_x509_certificate(self.apiserver_cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ipaddress.IPv4Address(ip) in names.get_values_for_type(x509.IPAddress)

    def _make_serving(self, ip: str) -> None:
        addresses = dict.fromkeys((ip, SERVICE_IP, "127.0.0.1"))  # in order, once each
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.IPv4Address(a)) for a in addresses
        ]
        names += [x509.DNSName(n) for n in DNS_NAMES]
        extensions: list[x509.ExtensionType] = [
            x509.SubjectAlternativeName(names),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ]
        self._issue("apiserver", _subject("kube-apiserver", None), extensions)

    def _ensure_client(self, user: str, common_name: str, organization: str | None) -> None:
        if self.cert(user).exists() and self.key(user).exists():
            return
        extensions: list[x509.ExtensionType] = [
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        ]
        self._issue(user, _subject(common_name, organization), extensions)

    def _issue(self, stem: str, subject: x509.Name, extensions: list[x509.ExtensionType]) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        if not isinstance(ca_key, Key):
            raise ValueError(f"{self.ca_key} is not an ECDSA key")
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(subject, ca_cert.subject, key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(_usage(cert_sign=False), True)
        for extension in extensions:
            builder = builder.add_extension(extension, False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(self.directory / f"{stem}.key", _private_bytes(key), secret=True)
        _write(self.directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM))


def _subject(common_name: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization \
        else []  # fmt: skip
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + VALIDITY)
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _private_bytes(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _public_bytes(key: Key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    """Write ``data`` under a temporary name and rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(temporary, path)
