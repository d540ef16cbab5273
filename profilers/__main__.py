"""Device-side entry point: `python -m profilers {info,doctor,lock-clocks,run,bundle,engine}`; prints one JSON object.

Failures the user can fix print `{"error": {kind, message, hint}}` and exit 2, so the host can show them as
one line. Progress goes to stderr as JSON lines.
"""

import argparse
import json
import os
import sys

from .errors import ProfilerError


def _emit(obj, out=None):
    text = json.dumps(obj, sort_keys=True)
    if out:
        tmp = out + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, out)
        text = json.dumps({"result_file": out})
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="profilers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the device facts (Python, OS, CPU, runtimes, clocks)")
    doctor = sub.add_parser("doctor", help="check what the device lacks for a runtime")
    doctor.add_argument("--backend", default="onnxruntime")
    doctor.add_argument("--provider", default=None)
    lock = sub.add_parser("lock-clocks", help="run the device's clock-locking commands (JSON list of argv)")
    lock.add_argument("commands", help='e.g. [["sudo", "-n", "jetson_clocks"]]')
    run = sub.add_parser("run", help="measure a plan")
    run.add_argument("plan")
    run.add_argument("--out", default=None, help="write the result here instead of stdout")
    bundle = sub.add_parser("bundle", help="validate a bundle: checksums, parity, accuracy, latency")
    bundle.add_argument("request")
    bundle.add_argument("--out", default=None, help="write the report here instead of stdout")
    engine = sub.add_parser("engine", help="build a bundle's TensorRT engine here (fp32, fp16, int8)")
    engine.add_argument("request")
    engine.add_argument("--out", default=None, help="write the build record here instead of stdout")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from .sysinfo import collect

            _emit(collect())
        elif args.command == "doctor":
            from .sysinfo import collect
            from .sysinfo import doctor as run_doctor

            _emit({"checks": run_doctor(collect(), args.backend, args.provider)})
        elif args.command == "lock-clocks":
            from .clocks import lock as lock_clocks

            _emit(lock_clocks(json.loads(args.commands)))
        elif args.command == "bundle":
            from .bundle import run_bundles

            with open(args.request) as handle:
                request = json.load(handle)
            _emit(run_bundles(request, base_dir=os.path.dirname(os.path.abspath(args.request))), args.out)
        elif args.command == "engine":
            from .engine import build

            with open(args.request) as handle:
                request = json.load(handle)
            _emit(build(request, base_dir=os.path.dirname(os.path.abspath(args.request))), args.out)
        else:
            from .measure import run_plan

            with open(args.plan) as handle:
                plan = json.load(handle)
            _emit(run_plan(plan, base_dir=os.path.dirname(os.path.abspath(args.plan))), args.out)
    except ProfilerError as err:
        _emit(err.record())
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the host went away (killed, or its SSH connection dropped): nobody is left to read a result or a
        # traceback, and the interpreter's own flush at exit would fail the same way, so point both at devnull
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader closed
    return 0


if __name__ == "__main__":
    sys.exit(main())
