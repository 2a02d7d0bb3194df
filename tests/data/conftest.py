"""One small synthetic world shared by the data tests (8 train + 4 val scenes at 64 px)."""
import pytest

from fourm.data import world

WORLD_SIZE = 64


@pytest.fixture(scope="package")
def world_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    world.generate(str(root), num=8, size=WORLD_SIZE, seed=0, split="train")
    world.generate(str(root), num=4, size=WORLD_SIZE, seed=0, split="val")
    return root
