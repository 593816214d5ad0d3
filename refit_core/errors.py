"""The project's own exception types: each message is one line a user can act on."""


class RefitError(Exception):
    """Base of every error refitctl reports to a user (the CLI prints it as one line, exit code 2)."""


class ConfigError(RefitError):
    """A config, flag or layout that cannot work; raised before anything is submitted."""


class VerificationError(RefitError):
    """A destination byte differs from what the source held."""


class TransportError(RefitError):
    """A transport could not be set up or failed during a refit."""


class RunDirError(ConfigError):
    """A run or sweep directory whose files are damaged, unreadable or cannot be written.

    `path` is the file, `problem` a short phrase ("is not a JSON object"); `runs` shows
    `BROKEN: <file name> <problem>` for it, every other command one line naming the file.
    """

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path} {problem}" + (f": {fix}" if fix else ""))

    def short(self) -> str:
        """`run.json is not a JSON object`: the file's name and what is wrong with it."""
        name = getattr(self.path, "name", None) or str(self.path).rsplit("/", 1)[-1]
        return f"{name} {self.problem}"
