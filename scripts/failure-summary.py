#!/usr/bin/env python3
"""Repeats the failures of a `cargo test` log at its end.

CI keeps only the tail of a run's output, and a failing test's panic is
printed long before it: this prints, for every failed test, where it
panicked and the last lines it printed, then the failing targets.
Usage: failure-summary.py LOG
"""
import re
import sys

TAIL_LINES = 40
PANIC_CONTEXT_LINES = 8


def sections(lines):
    """Yields (name, body lines) of every `---- NAME stdout ----` block."""
    name, body = None, []
    for line in lines:
        header = re.match(r"^---- (.+) stdout ----$", line)
        if header or line == "failures:" or line.startswith("test result:"):
            if name is not None:
                yield name, body
            name, body = (header.group(1), []) if header else (None, [])
        elif name is not None:
            body.append(line)
    if name is not None:
        yield name, body


def main(path):
    with open(path, errors="replace") as log:
        lines = [line.rstrip("\n") for line in log]
    print("==== failed tests (repeated from the log above) ====")
    for name, body in sections(lines):
        print(f"---- {name} ----")
        for index, line in enumerate(body):
            if "panicked at" in line:
                print("\n".join(body[index:index + PANIC_CONTEXT_LINES]))
        print(f"  [last {TAIL_LINES} lines]")
        print("\n".join(body[-TAIL_LINES:]))
    for line in lines:
        if line.startswith("test ") and line.endswith("FAILED"):
            print(line)
    failing = False
    for line in lines:
        if "target failed" in line or "targets failed" in line:
            failing = True
        if failing:
            print(line)


if __name__ == "__main__":
    main(sys.argv[1])
