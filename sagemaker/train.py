"""Entry point for a SageMaker PyTorch estimator (``entry_point="train.py", source_dir="sagemaker"``).

It runs ``dogbreed train`` with the job's hyperparameters; install dogbreed in the training image
(or list it in a requirements.txt beside this file).
"""

from dogbreed.sagemaker import main

if __name__ == "__main__":
    raise SystemExit(main())
