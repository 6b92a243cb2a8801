"""Train or evaluate the speech emotion model on KEMDy19/KEMDy20, RAVDESS, TESS, EmoDB or a manifest corpus (or the
synthetic demo corpus).

    python main.py --SorL speaker                     # train; a new folder under exp/
    python main.py --recipe published                 # the 2022 contest entry's configuration (recipes/)
    python main.py --test_only exp/<run folder>       # evaluate a saved run
    python main.py --resume exp/<run folder>          # continue an interrupted run or experiment
    torchrun --nproc_per_node 4 main.py --SorL speaker --amp   # data-parallel on 4 GPUs

This file parses, checks and dispatches; the flags are options.py, the training engine engine.py. The flags are
parsed before torch is imported, so that -h and a mistyped flag answer at once.
"""
import os
import sys
from contextlib import nullcontext, redirect_stdout
from functools import partial
from pathlib import Path

from errors import FlagError, one_line_errors
from options import RESUME_OVERRIDES, explicit_flags, parse_args

# What --test_only takes: the run and where and how to evaluate it, and the data flags a saved run can take anew.
TEST_ONLY_FLAGS = ("test_only", "test_path", "save_path", "device", "gpu_id", "allow_corpus_change")
TEST_ONLY_OVERRIDES = ("test_split", "data_dir", "cache_dir")
DEPRECATED = {"test_path": "use --test_only RUN", "sr": "audio is always resampled to 16 kHz; drop the flag"}


def check_not_distributed(what: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FlagError(f"{what} under torchrun: spread the runs over GPUs with one process each instead "
                        "(python main.py --cv ... --plan_only, then one `--resume <folder> --gpu_id K` per GPU)")


def dispatch(argv: list[str]) -> None:
    args = parse_args(argv, __doc__)
    given = explicit_flags(argv)
    for flag in DEPRECATED.keys() & given.keys():
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for all processes
            print(f"warning: --{flag} is deprecated: {DEPRECATED[flag]}", file=sys.stderr)
    import runtime  # noqa: F401  (process settings that must precede `import torch`)
    from engine import evaluate_run, resolve_device, resume_run, run_name, train
    from experiment import is_experiment, run_experiment

    if args.test_only is not None or args.test_path:
        if not (args.test_only or args.test_path):
            raise FlagError("--test_only needs a run folder: --test_only exp/<run>")
        extra = sorted(set(given) - set(TEST_ONLY_FLAGS) - set(TEST_ONLY_OVERRIDES))
        if extra:
            raise FlagError(f"--test_only evaluates a saved run as it was trained: {' '.join('--' + k for k in extra)} "
                            f"cannot apply to it; only {' '.join('--' + k for k in TEST_ONLY_OVERRIDES)} (another "
                            f"test split, another copy of the corpus) and "
                            f"{' '.join('--' + k for k in TEST_ONLY_FLAGS[2:])} may be given with it")
        evaluate_run(args.test_only or args.test_path, args.save_path, resolve_device(args.device, args.gpu_id),
                     args.allow_corpus_change, {k: given[k] for k in TEST_ONLY_OVERRIDES if k in given})
    elif args.resume:
        extra = sorted(set(given) - set(RESUME_OVERRIDES) - {"resume"})
        if extra:
            raise FlagError(f"--resume continues a run with its saved arguments; only "
                            f"{' '.join('--' + k for k in RESUME_OVERRIDES)} may be given with it, not "
                            f"{' '.join('--' + k for k in extra)}")
        overrides = {k: given[k] for k in RESUME_OVERRIDES if k in given}
        if (Path(args.resume) / "runs.json").exists():
            check_not_distributed("an experiment (--resume of a --cv/--seeds folder)")
            run_experiment(args, "", train, partial(resume_run, overrides=overrides), overrides)
        else:
            resume_run(Path(args.resume), overrides)
    elif is_experiment(args):
        check_not_distributed("--cv/--seeds")
        run_experiment(args, run_name(args), train, partial(resume_run, overrides={}))
    else:
        train(args)


def main(argv: list[str] | None = None) -> None:
    quiet = int(os.environ.get("RANK", "0")) > 0  # data-parallel: rank 0 speaks for all processes
    try:
        with redirect_stdout(open(os.devnull, "w")) if quiet else nullcontext(), one_line_errors():
            dispatch(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # the resume command was printed where the run was interrupted
        raise SystemExit(130) from None
    except SystemExit as stop:
        if quiet and stop.code not in (0, None):  # rank 0 has printed the same one-line error
            raise SystemExit(1) from None
        raise
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
