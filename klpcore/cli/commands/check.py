"""``klpcore check``: whether modules load on target kernels (the work is in :mod:`klpcore.check`)."""

from __future__ import annotations

import argparse

from ..args import kernel_target
from ..parser import add_kernel_option_flag, command
from ..render import emit_json


def _check_args(sp: argparse.ArgumentParser) -> None:
    from ...check.command import add_arguments

    add_arguments(sp)
    add_kernel_option_flag(sp)


@command(
    "check",
    help="judge whether modules load on target kernels (and whether a livepatch applies)",
    description="Run the kernel's load sequence for each MODULE on each --target kernel directory.",
    arguments=_check_args,
)
def cmd_check(args: argparse.Namespace) -> int:
    from ...check.command import run

    options = kernel_target(argparse.Namespace(kernel="newest", kernel_option=args.kernel_option)).options
    return run(args, options, lambda doc, code: emit_json(args, doc, code))
