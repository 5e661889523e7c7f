"""The watchdog's verdict on what every rank posted, and a single process's ranks, without torchrun
(tests/test_torchrun.py hangs and cuts real ranks)."""

import logging

import torch

from dogbreed.distributed import ALONE, DDP, SHARE, SINGLE, from_environment, session
from dogbreed.watchdog import verdict

T = 5.0  # --rank-timeout


def posts(*points: int) -> dict[int, tuple]:
    return {r: (1, point, 0, f"step {point}") for r, point in enumerate(points)}


def marks(**ages: tuple[float, float]) -> dict[int, dict[str, float]]:
    """rank -> seconds since its beat and its work last changed, at now=100."""
    return {int(r[1:]): {"beat": 100 - beat, "work": 100 - work} for r, (beat, work) in ages.items()}


def test_all_ranks_answering_and_moving_is_no_verdict():
    assert verdict(posts(3, 3), marks(r0=(1, 1), r1=(1, 1)), 100, T, me=0) is None


def test_a_silent_rank_is_named_by_the_lowest_healthy_rank_only():
    seen, changed = posts(3, 2, 3), marks(r0=(1, 1), r1=(9, 9), r2=(1, 1))
    line = verdict(seen, changed, 100, T, me=0)
    assert line.startswith("rank 1 stopped answering 5 s ago (last at step 2)") and "--rank-timeout 5" in line
    assert verdict(seen, changed, 100, T, me=2) is None  # rank 0 says it
    # with rank 0 the silent one, rank 1 says it
    assert verdict(seen, marks(r0=(9, 9), r1=(1, 1), r2=(1, 1)), 100, T, me=1).startswith("rank 0 stopped answering")


def test_a_rank_behind_with_no_new_work_is_named_while_one_still_working_is_not():
    seen = posts(4, 2)  # rank 1 sits two points behind
    assert verdict(seen, marks(r0=(1, 9), r1=(1, 3)), 100, T, me=0) is None  # it still ticks: a slow share
    line = verdict(seen, marks(r0=(1, 9), r1=(1, 9)), 100, T, me=0)
    assert line.startswith("rank 1 made no progress for 5 s at step 2 while the others wait at step 4"), line


def test_every_rank_idle_at_the_same_point_is_an_exchange_that_never_completed():
    line = verdict(posts(3, 3), marks(r0=(1, 9), r1=(1, 9)), 100, T, me=0)
    assert line.startswith("every rank has made no progress for 5 s (at step 3)"), line
    assert verdict(posts(3), marks(r0=(1, 9)), 100, T, me=0) is None  # alone (the others done): nobody to wait on


def test_a_single_process_exchanges_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = from_environment(DDP)
    assert ranks.role == SINGLE and ranks.main and ranks.writer and not ranks.joined
    values = torch.tensor([1.0, 2.0])
    assert ranks.all_sum(values) is values and ranks.gathered("x") == ["x"] and ranks.from_main(3) == 3
    assert ranks.train_batches(48, 29, seed=0) is None and list(ranks.share(3)) == [0, 1, 2]
    assert ALONE.wrap(torch.nn.Linear(2, 2), torch.device("cpu")).__class__ is torch.nn.Linear


def test_a_tuning_worker_under_torchrun_knows_its_place_but_joins_no_group(monkeypatch):
    from dogbreed.config import TrainConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    logger = logging.getLogger("dogbreed")
    before = logger.level
    with session(TrainConfig(), join=False) as ranks:
        assert (ranks.rank, ranks.world, ranks.local_world, ranks.role) == (1, 2, 2, SINGLE)
        assert not ranks.writer and not torch.distributed.is_initialized()
        assert ranks.train_batches(48, 29, seed=0) is None  # a trial is one process: its batch is whole
        assert logger.level == logging.WARNING  # rank 0 alone speaks
    assert logger.level == before  # and the process's logging is as it was once the session ends
    assert from_environment(SHARE).shares and from_environment(DDP).ddp
