"""One exception type for every problem a user can fix: the CLI prints it as a paragraph, no traceback."""


class LtcilError(Exception):
    """A problem with the user's input (config, data, files, budget) described in plain words."""


class ConfigError(LtcilError):
    pass


class DataError(LtcilError):
    pass


class LtcilWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as "warning: ...")."""
