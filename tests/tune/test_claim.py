"""Two worker processes claiming trials from one SQLite study never take the same trial."""

import multiprocessing

import optuna

from dogbreed.tune.study import claim, claim_lock, open_storage


def _claim_all(url, queue):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="race", storage=open_storage(url, 2))
    taken = []
    while (trial_id := claim(study, claim_lock(url))) is not None:
        taken.append(trial_id)
    queue.put(taken)


def test_concurrent_claims_on_sqlite_take_each_trial_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url, 2))
    for i in range(200):
        study.enqueue_trial({"x": i})
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_claim_all, args=(url, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    first, second = queue.get(timeout=120), queue.get(timeout=120)
    for w in workers:
        w.join(timeout=60)
    assert first and second  # both took part
    assert not set(first) & set(second)  # without the claim lock, 14 of 300 were taken twice
    assert len(first) + len(second) == 200
