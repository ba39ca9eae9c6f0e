"""The 4M training loader on a real tokens.lance: batches per second, and what a resume costs.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train_loader.py --workdir work/demo [--batches 40] \
        [--workers 0,2] [--ranks 1,2,4]

For each rank count W and worker count, ``LanceTokenDataset`` as rank 0 of W builds it in
the train stage (the run's modalities, masking and global batch size from
``load_config()``), timed over ``--batches`` steps after the first: steps/s and samples/s
of that rank (it reads and masks B/W samples a step), and, in process, the payload rows
it read per step (B/W: no rank reads the global batch). Then the time to the first batch
when starting at step 0 and at a step several epochs in (``--resume-step``): the seek
reads per-fragment row counts and the window it lands in, not the skipped rows. Worker
counts above 0 include the spawn start-up of the workers in the first-batch time.

Prints a table, then one JSON line with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def measure(cfg, uri, specs, *, num_workers: int, num_batches: int, start: int, ranks: int = 1) -> dict:
    from fm21.train.loop import _batches_from, _train_dataset

    train = cfg.train.model_copy(update={"num_workers": num_workers})
    dataset = _train_dataset(train, uri, specs, rank=0, world_size=ranks)
    readers: list = []
    if num_workers == 0:  # in process: count the payload rows the rank's readers take
        opened = dataset.open_streams
        dataset.open_streams = lambda stream: readers.extend(opened(stream)) or readers  # type: ignore[method-assign]
    t0 = time.perf_counter()
    batches = _batches_from(dataset, start, train)
    next(batches)
    first = time.perf_counter() - t0
    read0 = sum(r.rows_read for r in readers)
    t1 = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    seconds = time.perf_counter() - t1
    del batches
    rows = (sum(r.rows_read for r in readers) - read0) / num_batches if readers else None
    return {"ranks": ranks, "workers": num_workers, "start_step": start, "first_batch_s": round(first, 3),
            "steps_per_s": round(num_batches / seconds, 2),
            "samples_per_s": round(num_batches * train.batch_size / ranks / seconds, 1),
            "rows_read_per_step": None if rows is None else round(rows, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="work/demo")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--resume-step", type=int, default=1000)
    parser.add_argument("--ranks", default="1", help="rank counts W: rank 0 of W is measured")
    args = parser.parse_args()

    import torch

    from fm21.config import load_config
    from fm21.store.layout import Workdir

    torch.set_num_threads(1)
    cfg = load_config(overrides=[f"workdir={args.workdir}"])
    uri, specs = Workdir(cfg.workdir).tokens_uri, cfg.train.select(cfg.specs())
    measure(cfg, uri, specs, num_workers=0, num_batches=1, start=0)  # warm-up: imports, Lance runtime
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        for workers in (int(w) for w in args.workers.split(",")):
            for start in (0, args.resume_step):
                rows.append(measure(cfg, uri, specs, num_workers=workers, num_batches=args.batches, start=start,
                                    ranks=ranks))
    print(f"{'ranks':>5} {'workers':>7} {'start':>6} {'first batch s':>13} {'steps/s':>8} "
          f"{'samples/s/rank':>14} {'rows read/step':>14}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['workers']:>7} {r['start_step']:>6} {r['first_batch_s']:>13} "
              f"{r['steps_per_s']:>8} {r['samples_per_s']:>14} {r['rows_read_per_step'] if r['rows_read_per_step'] is not None else '-':>14}")
    print(json.dumps({"bench": "train_loader", "tokens": str(uri), "batch_size": cfg.train.batch_size,
                      "rows": rows}))


if __name__ == "__main__":
    main()
