"""Launcher: run a command, write its wall time and `os.wait4` rusage as JSON (stdlib only).

Run as `python -I -S spawn.py RESULT.json COMMAND [ARG ...]`. Linux carries a process's
RSS high-water mark across fork and exec, so a command forked straight from the benchmark
(~60 MB) would report at least that; from this small launcher the peak RSS is the
command's own. Once the command has exited it is left unreaped (`waitid(WNOWAIT)`) and its
`/proc/<pid>/stat` read: its own CPU apart from its waited-for children's (for
`meltano run`: Meltano's relay apart from the tap and the target).
"""

import json
import os
import sys
import time


def main() -> int:
    """Spawn, wait, write the measurement; exit with the command's status."""
    result_path, command = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    own = None
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            text = handle.read()
        utime, stime = text[text.rindex(")") + 2 :].split()[11:13]  # fields 14 and 15
        own = (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    _, status, usage = os.wait4(pid, 0)
    result = {
        "wall": time.perf_counter() - start,
        "cpu": usage.ru_utime + usage.ru_stime,
        "sys_cpu": usage.ru_stime,  # the kernel's share: I/O, page faults, lock waits
        "own_cpu": own,
        "rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "returncode": os.waitstatus_to_exitcode(status),
    }
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
