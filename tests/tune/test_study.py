"""Studies shared by workers: claims, and trials failed by another worker."""

import multiprocessing

import optuna
from optuna.trial import TrialState

from dogbreed.tune.study import claim, claim_lock, open_storage, work


def _claim_all(url, queue):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, 2)
    study = optuna.load_study(study_name="race", storage=storage)
    taken = []
    while (trial_id := claim(study, storage, claim_lock(url))) is not None:
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


def test_a_claim_runs_the_first_waiting_trial_and_returns_its_storage_id(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'tune.db'}", 2)
    other = optuna.create_study(study_name="other", storage=storage)
    other.tell(other.ask(), 0.0)  # trial ids count across studies; numbers count within one
    study = optuna.create_study(study_name="ids", storage=storage)
    for x in (1, 2):
        study.enqueue_trial({"x": x})
    trial_id = claim(study, storage)
    assert optuna.Trial(study, trial_id).number == 0
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.WAITING]


def test_a_trial_failed_by_another_worker_while_it_ran_does_not_stop_this_one(tmp_path, caplog):
    """What a stalled worker finds when it wakes up: another worker saw its heartbeat go stale and
    failed its trial. It says so and goes on with the next trial."""
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    storage = open_storage(url, 2)
    study = optuna.create_study(study_name="stale", storage=storage)
    for _ in range(3):
        study.enqueue_trial({})

    def objective(trial):
        if trial.number == 0:  # as fail_stale_trials in another process would
            study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        trial.report(1.0, 0)
        return 1.0

    assert work(study, storage, objective, poll_s=0.1, lock=claim_lock(url)) == 3
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "trial 0 was failed by another worker while it ran" in caplog.text
