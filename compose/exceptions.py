"""Errors of the compose package, under one root."""


class ComposeError(Exception):
    """Root of every error raised by `compose`. Its message is one line naming what and where."""


class ConfigError(ComposeError):
    """A stack file or environment variable that cannot be used."""


class ServiceStartError(ComposeError):
    """A service did not come up."""


class DataDirBusy(ComposeError):
    """The data dir is held by another running stack."""
