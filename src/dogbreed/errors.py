"""The one exception type whose message is meant for a person, not a traceback."""


class DogbreedError(Exception):
    """A problem the user can fix. The message is one line: what is wrong and what to do next."""
