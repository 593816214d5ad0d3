"""The project's own exception types: each message is one line a user can act on."""


class RefitError(Exception):
    """Base of every error refitctl reports to a user (the CLI prints it as one line, exit code 2)."""


class ConfigError(RefitError):
    """A config, flag or layout that cannot work; raised before anything is submitted."""


class VerificationError(RefitError):
    """A destination byte differs from what the source held."""


class TransportError(RefitError):
    """A transport could not be set up or failed during a refit."""
