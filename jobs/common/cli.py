"""How every job ends: one line for a known error, a traceback only for a bug (or with ``--verbose``).

Exit status of every job (``python -m jobs.<job>``):

====  ===================================================================================================
0     done (``promote``: promoted, kept or already in production)
1     failed: a bug or an outage (with its traceback), or a known failure the job reports in one line (a
      scoring pipeline or a partition that failed, a target that holds output, ``promote``'s refusals)
2     the command line or the config is wrong (argparse's own status): an unknown key, a bad ``--set``
      value, a setting the inputs or the model cannot take; fix it and run again
65    the input data is wrong (``EX_DATAERR`` in sysexits.h): a file missing, unreadable, in another
      encoding, with bad labels, ids or rows, splits or a model whose labels disagree, a corpus folder
      without its manifest; fix the file (or the settings that read it) and run again; a retry alone
      gives the same answer
75    the work is done and safe, but a service did not answer for what follows it (``EX_TEMPFAIL``): a
      training run whose checkpoint is complete while MLflow stayed down past ``tracking.outage_tolerance_s``;
      the message names the one command that finishes the run once MLflow answers
130   interrupted (Ctrl-C); a sweep so stopped registered nothing, and the same command resumes it
====  ===================================================================================================

The known errors are told apart by type, never by message: ``ConfigError`` (2);
``data_pipeline.errors.InputDataError`` (the readers', validation's, the label and corpus checks'),
``data_pipeline.quarantine.InputFileError`` and ``FileNotFoundError`` (65). A plain ``ValueError``
is not among them: a check that means "bad input" raises one of these types, so a bug never hides
behind a one-line message. ``--verbose`` (or TEXT_JOBS_VERBOSE=1) prints the traceback of these too.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable

from data_pipeline.errors import InputDataError
from data_pipeline.quarantine import InputFileError
from jobs.common import console
from jobs.common.config import ConfigError
from jobs.common.redaction import redact_text

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_TEMPFAIL = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a job stopped by Ctrl-C

INPUT_ERRORS = (InputDataError, InputFileError, FileNotFoundError)


def _fail(job: str, exc: BaseException, what_to_do: str | None) -> None:
    if console.verbose():
        traceback.print_exc()
    message = redact_text(str(exc)).strip() or type(exc).__name__
    print(f"\n{job} failed: {message}", file=sys.stderr)
    if what_to_do:
        print(f"  {what_to_do}", file=sys.stderr)
    sys.stderr.flush()


def entry_point(job: str, known: tuple[type[BaseException], ...] = (),
                later: tuple[type[BaseException], ...] = ()) -> Callable:
    """Wrap a job's ``main`` so its errors end as the table above says.

    ``known``: the job's own failures reported in one line with exit 1 (its message says what happened).
    ``later``: the work is safe and what is left waits on a service, exit 75 (its message names the command).
    """
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except ConfigError as exc:
                _fail(job, exc, "fix that setting (--config file or --set) and run again")
                return EXIT_USAGE
            except INPUT_ERRORS as exc:
                _fail(job, exc, "the input is at fault: fix the file named above (or the settings that read it) "
                                "and run again; --verbose shows the traceback")
                return EXIT_DATAERR
            except later as exc:
                _fail(job, exc, None)
                return EXIT_TEMPFAIL
            except known as exc:
                _fail(job, exc, None)
                return EXIT_FAILED
        return wrapped
    return wrap
