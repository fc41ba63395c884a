"""The rules of Caffe's tools/extra/parse_log.py and extract_seconds.py, restated for our tests (not a copy):
a Caffe log becomes a train table and a test table, one row per iteration with NumIters, Seconds,
LearningRate and one column per net output.

* the year comes from the file's ctime; a line's time is glog's ``[IWEF]MMDD hh:mm:ss.micro`` (split on
  whitespace: field 0 gives month and day, field 1 the clock); a month smaller than the last line's means a
  new year; the start time is the first line containing ``Solving``;
* the last ``Iteration (\\d+)`` seen is the row's iteration; nothing is read before the first one; a line whose
  time cannot be read (ValueError) is passed over; a line with no field at all would stop parse_log with an
  IndexError, so we raise too;
* ``lr = <number>`` sets the current learning rate;
* ``Train net output #k: name = value`` / ``Test net output #k: ...`` fill a row of that table; a row is
  started when the iteration changes and is complete when it has as many columns as the table's first row;
* the first row's LearningRate is copied from the second's (the rate is printed after the first outputs).
"""
from __future__ import annotations

import datetime
import os
import re

ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def line_time(line: str, year: int) -> datetime.datetime:
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:])
    clock = fields[1]
    dot = clock.rfind(".")
    hour, minute, second = (int(x) for x in clock[:dot].split(":"))
    return datetime.datetime(year, month, day, hour, minute, second, int(clock[dot + 1:]))


def _add_output(regex, row, rows, line, iteration, seconds, rate):
    m = regex.search(line)
    if m:
        if row is None or row["NumIters"] != iteration:
            if row is not None:
                rows.append(row)
            row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": rate}
        row[m.group(2)] = float(m.group(3))
    if row is not None and rows and len(row) == len(rows[0]):
        rows.append(row)
        row = None
    return row


def parse_log(path) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) as parse_log.py makes them. Raises AssertionError without a ``Solving`` line."""
    year = datetime.datetime.fromtimestamp(os.path.getctime(path)).year
    with open(path) as f:
        lines = f.read().splitlines()
    start = next((line_time(x, year) for x in lines if "Solving" in x), None)
    assert start is not None, f"{path}: no 'Solving' line (parse_log.py takes its start time from it)"
    last = start
    iteration, rate = -1.0, float("nan")
    train, test, train_row, test_row = [], [], None, None
    for line in lines:
        m = ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        try:
            t = line_time(line, year)
        except ValueError:
            continue
        if t.month < last.month:
            year += 1
            t = line_time(line, year)
        last = t
        seconds = (t - start).total_seconds()
        m = LEARNING_RATE.search(line)
        if m:
            rate = float(m.group(1))
        train_row = _add_output(TRAIN_OUTPUT, train_row, train, line, iteration, seconds, rate)
        test_row = _add_output(TEST_OUTPUT, test_row, test, line, iteration, seconds, rate)
    for rows in (train, test):
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return train, test
