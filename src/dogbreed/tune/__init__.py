"""``dogbreed tune``: hyperparameter search with Optuna over the same ``train`` every run uses.

    tuner.py    tune(): the study, its worker processes, the final training with the best trial
    study.py    studies shared by any number of workers through one database; claims, heartbeats
    space.py    search spaces (YAML), their checks, what each trial suggests
    results.py  trials.csv, best.json, the plots; ``tune show``

This package imports nothing itself, so that a process that only needs the storage layer
(``study``) does not load torch.
"""
