"""Where messages go. Library modules log with `logging.getLogger(__name__)` and scripts with
`logging.getLogger("scripts.<name>")`; a script's `main` sends them somewhere with these functions, once.

Only the project's loggers get handlers (other libraries' messages keep their own defaults):

    log_to_console(rank)       # stderr: INFO and up on rank 0, warnings and errors on the other ranks
    log_to_file(path)          # every message, DEBUG up, with its level (e.g. a sampling folder's logs/rank*.log)
    stop_logging()             # detach and close them (a `main` may run several times in one process)

Console lines are written around tqdm progress bars, so that a message does not tear a bar. A log file that
cannot be written any more (a full disk) stops taking messages, with one warning on the console.
"""

import logging
import os
import sys

from tqdm.auto import tqdm

PROJECT_LOGGERS = ("guided_diffusion", "evaluations", "scripts")
CONSOLE_FORMAT = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s")

_attached = []


class _ConsoleHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)  # clears the bars on that stream, then redraws them
            self.flush()
        except Exception:
            self.handleError(record)


class _FileHandler(logging.FileHandler):
    def handleError(self, record):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        self.setLevel(logging.CRITICAL + 1)  # a traceback per message would bury the run's own error line
        logging.getLogger(__name__).warning("cannot write the log file %s (%s): its messages stop here",
                                            self.baseFilename, error.strerror or error)


def _detach(handler):
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    _attached.remove(handler)
    handler.close()


def _attach(handler):
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)  # the handlers choose what they keep
        logger.addHandler(handler)
    _attached.append(handler)
    return handler


def log_to_console(rank=0):
    """Send messages to stderr; replaces the console handler of an earlier call."""
    for handler in [h for h in _attached if isinstance(h, _ConsoleHandler)]:
        _detach(handler)
    handler = _ConsoleHandler()
    handler.setFormatter(CONSOLE_FORMAT)
    handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return _attach(handler)


def log_to_file(path):
    """Append every message to `path` (its folder is created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = _FileHandler(path)
    handler.setFormatter(FILE_FORMAT)
    handler.setLevel(logging.DEBUG)
    return _attach(handler)


def stop_logging():
    while _attached:
        _detach(_attached[-1])
