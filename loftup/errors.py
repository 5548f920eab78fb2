"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class LoftupError(Exception):
    """Base class: the message says what was wrong and what to do. `exit_code`: what the CLI
    exits with after printing the message (2 unless a verb documents another)."""

    exit_code = 2


class ConfigError(LoftupError):
    """An unknown name, knob or an inconsistent option."""


class CheckpointError(LoftupError):
    """A checkpoint that cannot be read or does not fit the model."""


class InputError(LoftupError):
    """An input image, tensor or path that cannot be used."""


class BackendUnavailableError(LoftupError):
    """A backend or runtime that was asked for cannot run here."""


class ParityError(LoftupError):
    """An engine disagrees with the PyTorch reference beyond its tolerance."""


class NonFiniteError(LoftupError):
    """NaN or infinite numbers where results are about to be written."""


class TrainingError(LoftupError):
    """Training cannot go on (a non-finite loss, a distillation loss that is identically zero)."""


def closest(name: str, choices) -> str:
    """A ' (did you mean X?)' hint for an unknown name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(kind: str, value: str, choices) -> str:
    """Return `value` if it is one of `choices`, else raise ConfigError naming the valid ones."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"unknown {kind} {value!r}{closest(value, choices)}; choose one of: {', '.join(choices)}"
        )
    return value
