"""The project's error types. Library code raises these for bad input; ``normfree.cli`` turns exactly
these into a one-line message and exit status 2, so any other exception keeps its traceback (a bug).

Every class derives from :class:`ValueError` (and :class:`ModelOptionError` also from
:class:`TypeError`), so ``except ValueError`` in user code keeps working.
"""
from __future__ import annotations


class NormfreeError(ValueError):
    """Bad input from the user (an option, a file, a model name): the message says what and how to fix it."""


class ConfigError(NormfreeError):
    """A training, analysis or recipe option outside its domain, or options that contradict each other."""


class DataError(NormfreeError):
    """A data set spec, folder or file that cannot be used as given."""


class CheckpointError(NormfreeError):
    """A checkpoint that is missing, unreadable, untrusted or does not fit the model or run."""


class ModelSpecError(NormfreeError):
    """An unknown model name or a model option value outside its domain."""


class ModelOptionError(ModelSpecError, TypeError):
    """A keyword a model builder does not take (a ``TypeError``, as for any Python call)."""


class TrainingInterrupted(NormfreeError):
    """Ctrl-C stopped a training run after it saved a resumable checkpoint (the CLI exits 130, as for any
    interrupt, so lane runners and shells resume it rather than treat it as a failure)."""
