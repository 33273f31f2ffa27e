"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or a missing resource; the message says what to do."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(UserError):
    """SIGINT/SIGTERM: the checkpoint is saved; the same command resumes."""
