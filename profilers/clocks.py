"""Pin the device's clocks with its own tools (jetson_clocks, cpufreq governor), only when the user asks."""

import subprocess

from .errors import ProfilerError


def lock(commands, timeout=60):
    """Run each argv in `commands` (never through a shell); the first failure stops with a clear error."""
    ran = []
    for argv in commands:
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, timeout=timeout)
        except FileNotFoundError:
            raise ProfilerError("clock_lock_failed", "%s is not installed on the device" % argv[0],
                                "install it, or profile without --lock-clocks (the clock state is recorded)")
        except subprocess.TimeoutExpired:
            raise ProfilerError("clock_lock_failed", "`%s` did not finish in %d s" % (" ".join(argv), timeout),
                                "run it by hand on the device first")
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            raise ProfilerError("clock_lock_failed", "`%s` failed: %s" % (" ".join(argv), lines[-1] if lines else
                                                                         "exit %d" % proc.returncode),
                                "it usually needs passwordless sudo for this user; or run it by hand and "
                                "profile without --lock-clocks")
        ran.append({"argv": argv, "stdout_tail": proc.stdout[-2000:]})
    return {"locked": ran}
