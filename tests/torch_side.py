"""What the torch-side reference scripts share (they run in the torch interpreter, see
``tests/torch_peer.py``, which puts this folder on that interpreter's path).

Each script is a small command line of subcommands (``make`` a checkpoint, ``run`` it on photos,
record its training ``losses``) whose invocations can be chained with ``+`` so that one
interpreter, started once, does all of an architecture's work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import torch

#: The torch threads of every reference script (the machines have two cores).
THREADS = 2


def load_images(paths) -> list[torch.Tensor]:
    """``.npy`` uint8 HWC photos -> float CHW tensors in 0..1, as torchvision's models take."""
    return [torch.from_numpy(np.load(p)).permute(2, 0, 1).float() / 255.0 for p in paths]


def reference_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser and its subcommand set, with ``make ARCH OUTPUT --calibrate ... --num-classes
    --seed`` (a script adds its own ``make`` options and its other subcommands)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make")
    make.add_argument("arch")
    make.add_argument("output")
    make.add_argument("--calibrate", nargs="+", required=True)
    make.add_argument("--num-classes", type=int, default=91)
    make.add_argument("--seed", type=int, default=0)
    return parser, sub


def add_model_command(sub, name: str, inputs: str, nargs: str = "+") -> argparse.ArgumentParser:
    """A subcommand ``NAME ARCH WEIGHTS OUTPUT INPUTS... --num-classes``."""
    command = sub.add_parser(name)
    command.add_argument("arch")
    command.add_argument("weights")
    command.add_argument("output")
    command.add_argument(inputs, nargs=nargs)
    command.add_argument("--num-classes", type=int, default=91)
    return command


def run_chain(parser: argparse.ArgumentParser, commands: dict[str, Callable], argv=None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) as subcommands separated by ``+`` and run
    each in turn."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chain = [[]]
    for word in argv:
        if word == "+":
            chain.append([])
        else:
            chain[-1].append(word)
    torch.set_num_threads(THREADS)
    for words in chain:
        args = parser.parse_args(words)
        commands[args.command](args)
