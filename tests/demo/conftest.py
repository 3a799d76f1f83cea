"""Demo fixtures: the demo data set is generated once per test session into a tmp folder."""
import pytest


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("edgekit-cache"))


@pytest.fixture(scope="session")
def demo_dataset(demo_cache):
    from edgekit.host.demo import demo_data

    return demo_data(demo_cache)


@pytest.fixture(scope="session")
def val_coco(demo_dataset):
    from edgekit.device.coco_eval import load_coco

    return load_coco(demo_dataset.val_annotations)


@pytest.fixture
def one_thread():
    """One torch thread: on a CPU shared with other jobs, two OpenMP threads mostly wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
