"""One exception type for every user-facing error: its message is the one line the CLI prints."""


class TailorError(Exception):
    """A bad input (config, CLI argument, data file, checkpoint, model output) with a fix hint."""
