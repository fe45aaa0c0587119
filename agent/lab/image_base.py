"""A Debian bookworm base image made from Debian's packages, for machines that reach no container
registry (the lab's): ``debootstrap --variant=minbase`` into a scratch directory, trimmed as
Debian's own ``-slim`` images are, packed into a tarball cached per machine, and imported into
podman as ``NAME``. It holds apt and dpkg, all that deploy/Containerfile's stages need of a base
(each installs the rest from Debian's archive).

The tarball stays in the cache: a podman store that lost the image imports it again without
running debootstrap (~70 s). debootstrap runs in a mount namespace of its own, so the /proc it
mounts in the scratch tree never shows on the host.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from agent.lab.commands import Commands

log = logging.getLogger("weave-py")

NAME = "localhost/weave-py/debian:bookworm-minbase"
# podman's network configuration (and the lock it takes there on every command) in our cache,
# not the host's /etc/cni/net.d; the builds use the host network and define no networks
PODMAN = ("podman", "--network-config-dir", "/var/cache/weave-py/podman-networks")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
TARBALL = "debian-bookworm-minbase.tar"
LOG = "debootstrap.log"

APT_CONF = """\
// Nothing left behind by apt in an image layer: no downloaded packages, no binary caches, no
// translations (as in Debian's -slim images).
APT::Keep-Downloaded-Packages "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
"""
DPKG_EXCLUDES = """\
# Documentation, manuals and translations are not installed (copyright files are).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
EMPTIED = ("dev", "var/log", "var/cache/apt", "var/lib/apt/lists", "usr/share/man",
           "usr/share/info", "usr/share/locale", "usr/share/lintian")  # fmt: skip
DROPPED = ("etc/hostname", "etc/resolv.conf", "etc/apt/sources.list")


def ensure_base(
    commands: Commands,
    cache_dir: Path,
    mirror: str = MIRROR,
    security_mirror: str = SECURITY_MIRROR,
) -> str:
    """The local base image's name, imported into podman (and made first) when missing."""
    if commands.succeeds([*PODMAN, "image", "exists", NAME]):
        return NAME
    tarball = cache_dir / TARBALL
    if not tarball.exists():
        make_tarball(commands, cache_dir, mirror, security_mirror)
    message = f"debootstrap --variant=minbase {SUITE} {mirror}"
    commands.output([*PODMAN, "import", "--change", 'CMD ["bash"]', "--message", message,
                     str(tarball), NAME])  # fmt: skip
    log.info("import base image: %s from %s", NAME, tarball)
    return NAME


def make_tarball(
    commands: Commands, cache_dir: Path, mirror: str, security_mirror: str = SECURITY_MIRROR
) -> Path:
    """``cache_dir/TARBALL``: a minimal bookworm from ``mirror``, made slim (see ``slim``)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch, tarball, out = cache_dir / "rootfs.tmp", cache_dir / TARBALL, cache_dir / LOG
    partial = tarball.with_name(TARBALL + ".tmp")
    log.info("make base image: debootstrap --variant=minbase %s from %s (log %s)", SUITE,
             mirror, out)  # fmt: skip
    commands.output(["rm", "-rf", "--one-file-system", str(scratch)])
    commands.logged(["unshare", "--mount", "--propagation", "private", "debootstrap",
                     "--variant=minbase", SUITE, str(scratch), mirror], out)  # fmt: skip
    slim(scratch, mirror, security_mirror)
    commands.logged(["tar", "--numeric-owner", "--xattrs", "--sort=name", "-C", str(scratch),
                     "-cf", str(partial), "."], out)  # fmt: skip
    partial.replace(tarball)
    commands.output(["rm", "-rf", "--one-file-system", str(scratch)])
    return tarball


def slim(root: Path, mirror: str, security_mirror: str = SECURITY_MIRROR) -> None:
    """Trim a debootstrapped tree for an image: no package caches, lists, logs, documentation
    (copyright files stay), manuals, translations or device nodes; apt and dpkg told to keep it
    that way; the host's hostname and resolver gone (the runtime provides both); apt sources
    in deb822 form, with the security archive unless ``security_mirror`` is empty."""
    for name in DROPPED:
        (root / name).unlink(missing_ok=True)
    for name in EMPTIED:
        directory = root / name
        if directory.is_dir():
            for child in directory.iterdir():
                _remove(child)
    _keep_copyrights(root / "usr/share/doc")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/apt.conf.d/90weave-py-slim").write_text(APT_CONF)
    (root / "etc/dpkg/dpkg.cfg.d/90weave-py-slim").write_text(DPKG_EXCLUDES)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(sources(mirror, security_mirror))


def sources(mirror: str, security_mirror: str = SECURITY_MIRROR) -> str:
    """apt's deb822 sources for bookworm (and its updates, and security when given)."""
    entry = "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\n" \
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"  # fmt: skip
    text = entry.format(mirror, f"{SUITE} {SUITE}-updates")
    if security_mirror:
        text += "\n" + entry.format(security_mirror, f"{SUITE}-security")
    return text


def _keep_copyrights(doc: Path) -> None:
    """Remove everything under ``doc`` but the packages' copyright files."""
    for directory, subdirectories, files in os.walk(doc, topdown=False):
        for name in files:
            if name != "copyright":
                os.unlink(os.path.join(directory, name))
        for name in subdirectories:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                os.unlink(path)
            elif not os.listdir(path):
                os.rmdir(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
