"""``python bench/bench_match.py [options]``: the same as ``refmatch bench``; see refmatch/bench.py."""
import sys

from refmatch.__main__ import main

if __name__ == "__main__":
    sys.argv[1:1] = ["bench"]  # as the console script: a user error prints one line
    sys.exit(main())
