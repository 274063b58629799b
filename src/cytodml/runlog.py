"""Logging for workflow jobs: one log file per job, holding progress lines and, on failure, the reason."""

import contextlib
import logging
import sys


@contextlib.contextmanager
def logged(path, name="cytodml"):
    """Send the ``cytodml`` loggers to ``path`` (and stderr); a failure's message is written there before it propagates.

    Snakemake shows the log of a failed job, so a bad-input error lands where the user looks first.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    try:
        yield logger
    except Exception as error:
        logger.error("%s: %s", type(error).__name__, error)
        raise
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
