"""The peer: TRL's own `trl sft` script, run in-process with the probe appended to its callbacks.

    python -m bench.peer --model_name_or_path ... --dataset_name ... --max_steps 20 ...

`trl sft ARGS` parses ARGS with ``trl.scripts.sft.make_parser`` and runs ``trl.scripts.sft.main``
in a child started by `accelerate launch`; this module calls the same two functions in one
process. The only change is ``trl.SFTTrainer`` swapped for a subclass that appends the probe
(``main`` imports the name when it runs). The runner sets OMP_NUM_THREADS for both sides, which
is what `accelerate launch` would otherwise set (to 1 on CPU unless told otherwise).
"""

from __future__ import annotations

import sys

from bench.probe import Probe


def main(argv: list[str]) -> None:
    import trl
    from trl.scripts import sft

    class ProbedSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), Probe()], **kwargs)

    trl.SFTTrainer = ProbedSFTTrainer
    parser = sft.make_parser(prog="trl sft")
    sft.main(*parser.parse_args_and_config(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
