"""``torchrun --nproc_per_node N -m napari_dinounet.predict ARGS``: ``dinounet predict`` on N processes.

Takes exactly the arguments of ``dinounet predict``. Each process joins the process group torchrun sets
up (as :mod:`napari_dinounet.torchrun` does: one GPU per process by LOCAL_RANK, gloo on CPU), loads the
network, and predicts its share: every N-th input file from its rank on, each written by the process that
predicted it (atomically, as ``dinounet predict`` writes); a lone input volume is shared by its slices
instead, gathered on rank 0, which writes it. Image statistics still span the whole image, so the files
equal a one-process run's. Several machines: the same command on each with torchrun's ``--nnodes``,
``--node_rank`` and ``--rdzv_endpoint`` flags (README, "Prediction on several GPUs or machines").
Started without torchrun it predicts on one process.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main
    from .torchrun import process_group

    argv = sys.argv[1:] if argv is None else argv
    with process_group(argv):
        return cli_main(["predict", *argv])


if __name__ == "__main__":
    sys.exit(main())
