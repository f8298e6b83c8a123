"""``python bench/bench_match.py [options]``: the same as ``refmatch bench``; see refmatch/bench.py."""
from refmatch.bench import main

if __name__ == "__main__":
    main()
