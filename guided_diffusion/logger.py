"""Key-value training logs: averaged between dumps, printed as one line and appended to CSV and JSONL.

    logger.configure("runs/digits")      # rank 0 writes runs/digits/progress.csv and log.jsonl
    logger.logkv_mean("loss", 0.12)      # averaged until the next dump
    logger.logkv("step", 100)            # last value wins
    logger.dumpkvs()                     # print, append a row, reset

Only rank 0 writes (others keep the calls as no-ops), so the training code does not need to check.
When a later dump brings keys that the CSV header lacks, the CSV is rewritten with the wider header.
"""

import csv
import json
import math
import os
import sys
import time

_current = None


class Logger:
    def __init__(self, dir=None, rank=0, stream=sys.stdout, formats=("stdout", "csv", "jsonl")):
        self.dir = dir
        self.rank = rank
        self.stream = stream
        self.formats = tuple(formats) if rank == 0 else ()
        self.values = {}
        self.sums = {}
        self.counts = {}
        self.write = self._write_stream
        if dir and rank == 0:
            os.makedirs(dir, exist_ok=True)

    def _write_stream(self, text):
        print(text, file=self.stream, flush=True)

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
            if "stdout" in self.formats:
                self._print_line(row)
            if self.dir and "csv" in self.formats:
                self._append_csv(row)
            if self.dir and "jsonl" in self.formats:
                with open(os.path.join(self.dir, "log.jsonl"), "a") as f:
                    f.write(json.dumps({"time": round(time.time(), 3), **{k: _plain(v) for k, v in row.items()}})
                            + "\n")
        self.values, self.sums, self.counts = {}, {}, {}
        return row

    def log(self, *args):
        if self.rank == 0 and "stdout" in self.formats:
            self.write(" ".join(str(a) for a in args))
        if self.rank == 0 and self.dir:
            with open(os.path.join(self.dir, "log.txt"), "a") as f:
                print(*args, file=f)

    # -- writers ------------------------------------------------------------------------------------

    def _print_line(self, row):
        first = [k for k in ("step", "samples") if k in row]
        keys = first + sorted(k for k in row if k not in first)
        self.write(" | ".join(f"{k} {_fmt(row[k])}" for k in keys))

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
            with open(path + ".tmp", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header, restval="")
                writer.writeheader()
                writer.writerows(rows)
            os.replace(path + ".tmp", path)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header, restval="").writerow({k: _plain(v) for k, v in row.items()})


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


def configure(dir=None, rank=0, formats=("stdout", "csv", "jsonl"), stream=sys.stdout):
    global _current
    _current = Logger(dir, rank=rank, formats=formats, stream=stream)
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


def log(*args):
    get_current().log(*args)
