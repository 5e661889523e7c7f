"""The exceptions whose message is meant for a person, not a traceback."""


class DogbreedError(Exception):
    """A problem the user can fix. The message is one line: what is wrong and what to do next."""


class JobError(DogbreedError):
    """A problem every rank of a torchrun job meets alike, before the ranks join (a flag that does not
    fit the job): rank 0 alone says it, so the job's output holds it once, not once per rank."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank
