"""Fixtures of the hostile-peer lab modules (tests/netns/test_hostile_*.py): one lab per module
(a module overrides ``lab_scene`` to build it another way, e.g. with a secret), checked intact
before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.hostile.scene import Scene, scene, undamaged


@pytest.fixture(scope="module")
def lab_scene() -> Iterator[Scene]:
    """The module's 3-node lab with its stranger host, without a secret."""
    with scene() as built:
        yield built


@pytest.fixture
def s(lab_scene: Scene) -> Scene:
    """The shared scene, checked intact before the test."""
    return undamaged(lab_scene)
