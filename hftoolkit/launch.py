"""Several processes: `hft finetune --num-processes N` re-executes itself under accelerate's own launcher, and any
launched worker (accelerate launch, torchrun) gets the environment fix-ups it needs.

The CLI decides to relaunch and passes its own arguments through (less --num-processes); nothing here reads sys.argv.
This is the one module that reads the launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK). accelerate's launcher
reads the user's `accelerate config` file as usual, so FSDP, DeepSpeed, mixed precision and multi-node settings
come from there. Standard library only at import time: the CLI imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Iterator, NoReturn

from hftoolkit.errors import HftError

log = logging.getLogger("hftoolkit")


# Environment variables that ask `hft finetune` for extra Trainer callbacks: the test suite's fault injection
# (hftoolkit/testing/faults.py). Read here, with the launcher's variables, so the training code never names them.
EXTRA_CALLBACKS_PREFIX = "HFT_TEST_"
NUM_PROCESSES_OPTION = "--num-processes"


def in_launched_worker() -> bool:
    """True inside a process started by torchrun / accelerate launch (they set LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 outside a launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process prints and writes for the job: rank 0, or the only process."""
    return rank() == 0


def under_launcher() -> bool:
    """Started by torch elastic (torchrun, accelerate launch): the launcher forwards signals and ends workers itself."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def rank_label() -> str:
    """`[rank 1] ` in a multi-process job, so a worker's error says which worker it came from; else empty."""
    if world_size() > 1 and "RANK" in os.environ:
        return f"[rank {rank()}] "
    return ""


def extra_callbacks_requested() -> bool:
    return any(name.startswith(EXTRA_CALLBACKS_PREFIX) for name in os.environ)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch_argv(num_processes: int, hft_args: list[str], *, has_config: bool, port: int) -> list[str]:
    """The accelerate launch command line for `hft <hft_args>` on `num_processes` processes of this machine."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if not has_config:
        # Without a config file accelerate runs CPU jobs through its simple launcher, which starts ONE process for
        # --num_processes N (several CPU processes need mpirun). Its torchrun path (--multi_gpu) starts N workers;
        # prepare_worker_env then connects them with gloo when there is no GPU.
        argv += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        argv += ["--main_process_port", str(port)]
    return argv + ["-m", "hftoolkit", *hft_args]


def worker_args(argv: list[str]) -> list[str]:
    """The user's own `hft` arguments, unchanged, less `--num-processes N` (the workers must not relaunch)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == NUM_PROCESSES_OPTION:
            skip = True
        elif not arg.startswith(NUM_PROCESSES_OPTION + "="):
            out.append(arg)
    return out


def relaunch(num_processes: int, argv: list[str], *, command: str) -> NoReturn:
    """Replace this process by accelerate's launcher running `hft <argv>` (the user's arguments, less
    --num-processes) on `num_processes` processes."""
    if in_launched_worker():
        raise HftError("--num-processes: this command already runs under a launcher (torchrun / accelerate launch)")
    import torch
    from accelerate.commands.config.config_args import default_config_file

    gpus = torch.cuda.device_count()
    has_config = os.path.isfile(default_config_file)
    if not has_config and 0 < gpus < num_processes:
        raise HftError(
            f"--num-processes {num_processes} needs {num_processes} GPUs on this machine but {gpus} are visible; "
            "use at most one process per GPU"
        )
    env = dict(os.environ, HFT_COMMAND_LINE=command)
    if gpus == 0 and "OMP_NUM_THREADS" not in env:
        # torchrun would pin every worker to 1 thread; share the cores instead.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    launch_argv = relaunch_argv(num_processes, worker_args(argv), has_config=has_config, port=_free_port())
    log.info("launching %d processes: accelerate launch %s", num_processes, " ".join(launch_argv[3:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, launch_argv, env)


def prepare_worker_env() -> None:
    """Fix-ups a launched worker needs before TrainingArguments sets up the distributed state.

    torchrun-started workers on a machine without an accelerator would each train alone (accelerate only joins
    CPU processes into one job when told they run on CPU) and all write the same run directory; joining them with
    gloo is what the user asked for.
    """
    if in_launched_worker() and world_size() > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        if not _has_accelerator():
            os.environ["ACCELERATE_USE_CPU"] = "true"
    elif (
        not in_launched_worker()
        and "MASTER_ADDR" in os.environ
        and os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    ):
        log.warning(
            "accelerate launch --cpu started a single process: accelerate runs several CPU processes only through "
            "mpirun. For N processes on this machine use `hft finetune RECIPE --num-processes N`"
        )


def _has_accelerator() -> bool:
    import torch

    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Main process runs the block first (e.g. writes the datasets cache), the others then read what it wrote."""
    if not in_launched_worker() or world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    prepare_worker_env()
    with PartialState(cpu=not _has_accelerator()).main_process_first():
        yield
