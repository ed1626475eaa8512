"""Tiny launcher: run a command, write its wall time and `wait4` rusage as JSON.

Linux carries a process's RSS high-water mark across fork and exec, so a child forked
from the benchmark runner (matplotlib, sandbox client: ~90 MB) would report at least the
runner's RSS as its `ru_maxrss`. This launcher is started with `python -I -S` (a few MB,
stdlib only), and spawns the measured command from there, so the peak RSS reported is
the measured process's own.

Usage: `python -I -S spawn.py RESULT.json COMMAND [ARG ...]` (stdin/stdout/stderr and the
environment pass through to COMMAND).
"""

import json
import os
import resource
import sys
import time


def main() -> int:
    """Spawn, wait, write the measurement; exit with the command's status."""
    result_path, command = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "wall_seconds": wall,
                "user_seconds": usage.ru_utime,
                "system_seconds": usage.ru_stime,
                "max_rss_kb": usage.ru_maxrss,
                "returncode": code,
                "launcher_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            },
            handle,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
