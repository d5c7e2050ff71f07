"""The error finetox raises for a config it refuses (below every module that checks one)."""


class ConfigError(ValueError):
    """A config that finetox refuses, with a message naming the key and what is allowed."""
