"""Train or evaluate the multimodal emotion model on KEMDy19/KEMDy20 (or the synthetic demo corpus).

    python main.py --SorL speaker                     # train; a new folder under exp/
    python main.py --test_only exp/<run folder>       # evaluate a saved run
    python main.py --resume exp/<run folder>          # continue an interrupted run or experiment
    torchrun --nproc_per_node 4 main.py --SorL speaker --amp   # data-parallel on 4 GPUs

This file parses, checks and dispatches; the training engine is engine.py, the flags options.py.
"""
import runtime  # noqa: F401  (process settings that must precede `import torch`)

import argparse
import os
import sys
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import torch

from engine import evaluate_run, resolve_device, run_name, train
from errors import FlagError, one_line_errors
from experiment import is_experiment, run_experiment
from options import RESUME_OVERRIDES, check_args, explicit_flags, get_parser
from trained_run import resume_args

DEPRECATED = {"test_path": "use --test_only RUN", "sr": "audio is always resampled to 16 kHz; drop the flag"}


def resume_run(run_dir: Path, overrides: dict) -> Path:
    """Continue an interrupted run with its saved arguments (and the allowed `overrides`); flags added since it
    was saved get their defaults."""
    saved = resume_args(run_dir)
    if saved is None:
        return run_dir
    args = argparse.Namespace(**{**vars(get_parser().parse_args([])), **saved, **overrides, "resume": str(run_dir)})
    check_args(args)
    return train(args, run_dir, resume_overrides=overrides)


def check_not_distributed(what: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FlagError(f"{what} under torchrun: spread the runs over GPUs with one process each instead "
                        "(python main.py --cv ... --plan_only, then one `--resume <folder> --gpu_id K` per GPU)")


def dispatch(argv: list[str]) -> None:
    args = get_parser(__doc__).parse_args(argv)
    check_args(args)
    given = explicit_flags(argv)
    for flag in DEPRECATED.keys() & given.keys():
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for all processes
            print(f"warning: --{flag} is deprecated: {DEPRECATED[flag]}", file=sys.stderr)
    if args.test_only is not None or args.test_path:
        if not (args.test_only or args.test_path):
            raise FlagError("--test_only needs a run folder: --test_only exp/<run>")
        evaluate_run(args.test_only or args.test_path, args.save_path, resolve_device(args.device, args.gpu_id),
                     args.allow_corpus_change)
    elif args.resume:
        extra = sorted(set(given) - set(RESUME_OVERRIDES) - {"resume"})
        if extra:
            raise FlagError(f"--resume continues a run with its saved arguments; only "
                            f"{' '.join('--' + k for k in RESUME_OVERRIDES)} may be given with it, not "
                            f"{' '.join('--' + k for k in extra)}")
        overrides = {k: given[k] for k in RESUME_OVERRIDES if k in given}
        if (Path(args.resume) / "runs.json").exists():
            check_not_distributed("an experiment (--resume of a --cv/--seeds folder)")
            run_experiment(args, "", train, lambda run_dir: resume_run(run_dir, overrides), overrides)
        else:
            resume_run(Path(args.resume), overrides)
    elif is_experiment(args):
        check_not_distributed("--cv/--seeds")
        run_experiment(args, run_name(args), train, lambda run_dir: resume_run(run_dir, {}))
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
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
