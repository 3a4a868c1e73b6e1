#!/usr/bin/env python3
"""Summarize py-spy raw (collapsed-stack) profiles by function.

    .venv/bin/python bench/run.py --profile /tmp/prof        # records bulk-*.txt, agent-*.txt
    .venv/bin/python bench/profile_summary.py /tmp/prof/agent-*.txt

Prints, for the samples of all files given, the functions with the most "self" time (the frame
on top of the stack) and the most "total" time (anywhere in the stack), in percent of samples.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str, keep_lines: bool) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    short = "/".join(Path(path).parts[-2:]) if "/" in path else path
    line = f":{m.group('line')}" if keep_lines and m.group("line") else ""
    return f"{m.group('func')} ({short}{line})"


def summarize(files: list[Path], top: int, keep_lines: bool) -> str:
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if f]
            if frames and frames[0].startswith(("thread ", "process ")):
                frames = frames[1:]
            while frames and frames[0].startswith(("thread ", "process ")):
                frames = frames[1:]
            if not frames:
                continue
            names = [frame_name(f, keep_lines) for f in frames]
            samples += n
            self_c[names[-1]] += n
            for name in set(names):
                total_c[name] += n
    if not samples:
        return "no samples"
    out = [f"{samples} samples from {len(files)} file(s)", "", "self %  function"]
    out += [f"{100 * c / samples:6.1f}  {name}" for name, c in self_c.most_common(top)]
    out += ["", "total % function"]
    out += [f"{100 * c / samples:6.1f}  {name}" for name, c in total_c.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--lines", action="store_true", help="keep line numbers apart")
    args = ap.parse_args()
    print(summarize(args.files, args.top, args.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
