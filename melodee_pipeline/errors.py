"""Errors a user can act on. The CLI prints them as one `error: ...` line; Dagster fails the run with them."""


class UserError(Exception):
    """Bad input or environment: a setting, a library, a path, an unreachable database."""


class SettingError(UserError):
    def __init__(self, key: str, value: object, reason: str):
        self.key, self.value, self.reason = key, value, reason
        shown = "" if value is None else f" = {value!r}"  # `settings get` of an unknown key has no value
        super().__init__(f"invalid setting {key}{shown}: {reason}")


class LibraryError(UserError):
    pass


class DatabaseUnavailable(UserError):
    """The database server cannot be reached (refused, unknown host, timed out, connection lost)."""


class DatabaseError(UserError):
    """The server answered with an error: a missing table, a refused login, a failed statement."""


class StagingLocked(UserError):
    """Another staging run holds the advisory lock."""


class RunFailed(UserError):
    """The run did its work and failed at it (every album failed): exit 1, not a usage error."""


class StagingFull(RunFailed):
    """The staging filesystem cannot hold the next album: the run stops starting albums and fails."""
