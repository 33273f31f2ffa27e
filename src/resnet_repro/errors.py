"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or a missing resource; the message says what to do."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(UserError):
    """SIGINT/SIGTERM: the checkpoint is saved; the same command resumes."""


class WriteFailed(UserError):
    """A file could not be written (full disk, read-only folder, no permission): the message names it and
    says what to do. Writes are atomic, so the file it would have replaced is still whole."""
