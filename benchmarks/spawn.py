"""Tiny launcher: run a command, write its wall time and `wait4` rusage as JSON.

Linux carries a process's RSS high-water mark across fork and exec, so a child forked
from the benchmark runner (matplotlib, sandbox client: ~90 MB) would report at least the
runner's RSS as its `ru_maxrss`. This launcher is started with `python -I -S` (a few MB,
stdlib only), and spawns the measured command from there, so the peak RSS reported is
the measured process's own.

It also splits the command's CPU into its own and its waited-for children's: once the
command has exited it is left unreaped (`waitid` with `WNOWAIT`), its `/proc/<pid>/stat`
read (a zombie still reports its own `utime`/`stime` and its children's `cutime`/`cstime`),
then reaped with `wait4`. For `meltano run` that gives Meltano's own CPU (the relay) apart
from the tap's and the target's.

Usage: `python -I -S spawn.py RESULT.json COMMAND [ARG ...]` (stdin/stdout/stderr and the
environment pass through to COMMAND).
"""

import json
import os
import resource
import sys
import time


def own_and_children(pid: int) -> dict[str, float] | None:
    """CPU seconds of an exited, unreaped process: its own and its waited-for children's."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            text = handle.read()
    except OSError:
        return None
    # Fields after the parenthesised command name (which may hold spaces): state is 3rd,
    # utime, stime, cutime, cstime are the 14th to 17th of the whole line.
    fields = text[text.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) / tick for x in fields[11:15])
    return {
        "own_user_seconds": utime,
        "own_system_seconds": stime,
        "children_user_seconds": cutime,
        "children_system_seconds": cstime,
    }


def main() -> int:
    """Spawn, wait, write the measurement; exit with the command's status."""
    result_path, command = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    split = None
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        split = own_and_children(pid)
    except (OSError, AttributeError):
        pass
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
                "split": split,
            },
            handle,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
