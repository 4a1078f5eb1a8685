"""The one base class of "the user's input data is at fault" errors.

The readers' ``InputFormatError``, validation's ``DataValidationError`` and the label and corpus checks
derive from it, so a job's entry point (``jobs.common.cli``) tells bad data (exit 65, fix the file) from a
bad setting (exit 2) and from a bug (exit 1, with its traceback) by type, not by message. It stays a
``ValueError``, as those errors were before.
"""

from __future__ import annotations


class InputDataError(ValueError):
    """An input file (or a set of them) the job cannot use as it is; the message names the file(s)."""
