"""Model Monitor for a deployed model: is the world still the one it was trained for?

    observe.py    per image: embedding, breed, top-1 probability, "not a dog" score, verdict, size, brightness
    baseline.py   the validation split's statistics.json, constraints.json and sketch.npz (in every artifact)
    window.py     a window of captured requests (``dogbreed serve --capture``) and their ground truth
    checks.py     the two-sample tests: MMD on embeddings, chi-square on shares, Kolmogorov-Smirnov
    quality.py    accuracy, recall and the confusion matrix from ground truth, in SageMaker's shape
    execute.py    ``dogbreed monitor run``: one execution (or one per period), its files and exit status
    report.py     the HTML report: each check over time, the most unusual captured images

The training monitor (Debugger and Profiler's rules) is ``dogbreed.monitor``; this one watches an
endpoint after it is deployed.
"""
