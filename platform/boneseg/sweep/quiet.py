"""Ray's log records that boneseg expects and handles, kept out of the sweep's terminal:
they go to `<ray session>/logs/boneseg-driver.log`, and the terminal gets one line instead
where the user should know (a storage outage, a failed trial's traceback)."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from boneseg.sweep.tracker import log

# Ray's log records that are expected and handled, kept out of the terminal (into the log):
# logger -> (message start, the one line said instead the first time, or None)
RAY_NOISE = {
    # a restored experiment's trials that had not started have no result file yet
    "ray.tune.analysis.experiment_analysis": (("Failed to fetch metrics for", None),),
    # Tune's experiment-state sync while object storage is down: it syncs again when it answers
    "ray.train._internal.storage": (("Caught exception when creating directory", "storage"),),
    "ray.train._internal.syncer": (("Last sync command failed", "storage"),),
    # a trial's traceback (a lost node, an injected fault): the Tracker says retry or FAILED in one line
    "ray.tune.execution.tune_controller": (("Trial task failed for trial", "trial"),),
}
SAID_INSTEAD = {
    "storage": "storage {where} did not answer Tune's state sync; it syncs again once the storage answers "
               "(details: {log})",
    "trial": "a trial failed; Tune retries it from its resume point (tracebacks: {log})",
}


class _ToLog(logging.Filter):
    def __init__(self, handler: logging.Handler, rules, say):
        super().__init__()
        self.handler, self.rules, self.say = handler, rules, say

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for start, topic in self.rules:
            if text.startswith(start):
                self.handler.handle(record)
                if topic:
                    self.say(topic)
                return False
        return True


@contextlib.contextmanager
def ray_noise_to_log(storage_where: str, path: Path):
    """Inside the block, the records of RAY_NOISE go to `path` (the driver passes
    `<ray session>/logs/boneseg-driver.log`); each topic is said once, in one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    said: set[str] = set()

    def say(topic: str) -> None:
        if topic not in said:
            said.add(topic)
            log(SAID_INSTEAD[topic].format(where=storage_where, log=path))

    filters = [(logging.getLogger(name), _ToLog(handler, rules, say)) for name, rules in RAY_NOISE.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield path
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
        handler.close()
