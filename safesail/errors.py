"""One error type for everything a user can get wrong; the CLI prints it as one line."""


class SafesailError(Exception):
    """A user-facing problem (bad input, missing resource) with a one-line message."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())
