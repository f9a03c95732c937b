"""The training's metrics record: key-value rows averaged between dumps, appended to CSV and JSONL files.

    logger.configure("runs/digits")      # rank 0 writes runs/digits/progress.csv and log.jsonl
    logger.logkv_mean("loss", 0.12)      # averaged until the next dump
    logger.logkv("step", 100)            # last value wins
    logger.dumpkvs()                     # record the row, log it as one line, reset

Only rank 0 records (others keep the calls as no-ops), so the training code does not need to check.
When a later dump brings keys that the CSV header lacks, the CSV is rewritten with the wider header.
The row's line (format "message") is an INFO message of this module's `logging` logger, which goes
wherever the script sends messages (`runtime.logs`); messages other than metrics are logged directly.
"""

import csv
import io
import json
import logging
import math
import os
import time

from guided_diffusion.runtime.files import append_line, atomic_write_text

log = logging.getLogger(__name__)

_current = None


class Logger:
    def __init__(self, dir=None, rank=0, formats=("message", "csv", "jsonl")):
        self.dir = dir
        self.rank = rank
        self.formats = tuple(formats) if rank == 0 else ()
        self.values = {}
        self.sums = {}
        self.counts = {}
        if dir and rank == 0:
            os.makedirs(dir, exist_ok=True)

    # -- recording ----------------------------------------------------------------------------------

    def logkv(self, key, value):
        self.values[key] = value

    def logkv_mean(self, key, value):
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def getkvs(self):
        row = {key: self.sums[key] / self.counts[key] for key in self.sums}
        row.update(self.values)
        return row

    def dumpkvs(self):
        """Write the current row everywhere, clear it and return it."""
        row = self.getkvs()
        if row and self.rank == 0:
            if "message" in self.formats:
                log.info(_line(row))
            if self.dir and "csv" in self.formats:
                self._append_csv(row)
            if self.dir and "jsonl" in self.formats:
                append_line(os.path.join(self.dir, "log.jsonl"),
                            json.dumps({"time": round(time.time(), 3), **{k: _plain(v) for k, v in row.items()}}))
        self.values, self.sums, self.counts = {}, {}, {}
        return row

    # -- writers ------------------------------------------------------------------------------------

    def _append_csv(self, row):
        path = os.path.join(self.dir, "progress.csv")
        header, rows = [], []
        if os.path.exists(path):
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                missing = [k for k in sorted(row) if k not in header]
                if missing:
                    rows = [dict(zip(header, r)) for r in reader]
        else:
            missing = sorted(row)
        if missing:
            header = header + missing
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(path, text.getvalue())
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header, restval="").writerow({k: _plain(v) for k, v in row.items()})


def _line(row):
    """`step 100 | samples 800 | loss 0.12 | ...`: step and samples first, then the keys in order."""
    first = [k for k in ("step", "samples") if k in row]
    keys = first + sorted(k for k in row if k not in first)
    return " | ".join(f"{k} {_fmt(row[k])}" for k in keys)


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(value):
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# -- module-level logger ----------------------------------------------------------------------------


def configure(dir=None, rank=0, formats=("message", "csv", "jsonl")):
    global _current
    _current = Logger(dir, rank=rank, formats=formats)
    return _current


def get_current():
    global _current
    if _current is None:
        _current = Logger()
    return _current


def get_dir():
    return get_current().dir


def logkv(key, value):
    get_current().logkv(key, value)


def logkv_mean(key, value):
    get_current().logkv_mean(key, value)


def getkvs():
    return get_current().getkvs()


def dumpkvs():
    return get_current().dumpkvs()

