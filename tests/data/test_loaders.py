"""Image loaders: their worker processes end when a run is done with them."""

import multiprocessing

import torch
from torch.utils.data import DataLoader

from dogbreed.data.loaders import TensorBatches, shutdown_workers


def test_shutdown_workers_ends_a_persistent_loaders_workers_now():
    """Pins torch's private ``DataLoader._iterator._shutdown_workers``: if an upgrade renames it,
    the workers outlive ``shutdown_workers`` and this fails."""
    before = set(multiprocessing.active_children())
    loader = DataLoader(list(range(8)), batch_size=4, num_workers=1, persistent_workers=True)
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 1 and all(w.is_alive() for w in workers)  # persistent: kept after the pass
    shutdown_workers(loader)
    assert not any(w.is_alive() for w in workers), "torch's DataLoader._iterator._shutdown_workers changed"
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a later pass starts new workers
    shutdown_workers(loader)


def test_shutdown_workers_leaves_loaders_without_workers_alone():
    batches = TensorBatches(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 2, shuffle=False)
    shutdown_workers(batches)
    shutdown_workers(DataLoader(list(range(4)), batch_size=2))  # no workers, never iterated
    assert len(list(batches)) == 2
