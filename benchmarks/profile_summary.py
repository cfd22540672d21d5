"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): self and inclusive time per frame.

    python -m benchmarks.profile_summary PROFILE.txt [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

_LINE = re.compile(r"^(.*) (\d+)$")


def summarise(path: str, top: int = 30) -> str:
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            stack, count = m.group(1).split(";"), int(m.group(2))
            total += count
            frames = [re.sub(r" \((/.*/)?([^/]+):\d+\)$", r" (\2)", fr) for fr in stack]
            self_time[frames[-1]] += count
            for fr in set(frames):
                inclusive[fr] += count
    out = [f"{total} samples", "", "self %   frame"]
    out += [f"{100 * n / total:6.1f}   {fr}" for fr, n in self_time.most_common(top)]
    out += ["", "incl %   frame"]
    out += [f"{100 * n / total:6.1f}   {fr}" for fr, n in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    print(summarise(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
