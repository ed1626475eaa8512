"""`python -m benchmarks`: run the whole benchmark (see BENCHMARKS.md)."""

from benchmarks.run import main

if __name__ == "__main__":
    raise SystemExit(main())
