"""The lab's small test image, made offline from the machine's static busybox: the sandbox
(pause) image of every node and the image of the workload pods.

The archive has the layout ``docker save`` writes (``manifest.json``, the config, one layer),
which ``ctr images import`` takes. Every timestamp is zero and every entry in a fixed order,
so the same busybox always makes the same image.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path

TEST_IMAGE = "localhost/weave-py-lab/busybox:1"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = ("sh", "sleep", "nc", "hostname", "ping", "ip", "cat", "echo", "ls", "ps", "wget",
           "true", "env")  # fmt: skip
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
SLEEP_FOREVER = ["/bin/sleep", "2147483647"]


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    return info


def layer() -> bytes:
    """The image's only layer: busybox, the applets as links to it, and a root user."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "run", "sys", "tmp"):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755))
        body = BUSYBOX.read_bytes()
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(body)), io.BytesIO(body))
        for applet in APPLETS:
            tar.addfile(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):  # fmt: skip
            data = text.encode()
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return out.getvalue()


def archive(directory: Path, tag: str = TEST_IMAGE) -> Path:
    """``directory/busybox.tar``, made when missing: the image ``tag`` as ``docker save`` would
    write it."""
    path = directory / "busybox.tar"
    if path.exists():
        return path
    content = layer()
    config = json.dumps({
        "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Entrypoint": SLEEP_FOREVER, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(content).hexdigest()]},
    }, sort_keys=True).encode()  # fmt: skip
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag],
                            "Layers": ["layer/layer.tar"]}]).encode()  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(".busybox.tar.tmp")
    with tarfile.open(temporary, "w") as tar:
        for name, data in (("layer/layer.tar", content), (config_name, config),
                           ("manifest.json", manifest)):  # fmt: skip
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    temporary.replace(path)
    return path
