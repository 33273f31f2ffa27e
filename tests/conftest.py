import pickle
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["slurm_cluster"]  # the slurm_env fixture: a local SLURM cluster, or a skip with the reason


def write_fake_cifar(root: Path, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """A valid cifar-10-batches-py folder with random pixels: not the real bytes, so no md5 could match."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in [*((f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)], "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return folder


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip, saying why, where no CUDA GPU is visible."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none is visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_cifar(tmp_path) -> Path:
    """Parent folder holding a generated cifar-10-batches-py/ (100 train, 20 test images)."""
    write_fake_cifar(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def runs(tmp_path) -> Path:
    """Where run directories go in report and plot tests."""
    return tmp_path / "experiments"


@pytest.fixture
def results(tmp_path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """An ImageFolder tree: 3 classes x 6 train / 2 val JPEGs of varied sizes (some grey-scale, one CMYK)."""
    from imagefolders import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("imagenet") / "data")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP's spinning barriers make two threads many
    times slower when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
