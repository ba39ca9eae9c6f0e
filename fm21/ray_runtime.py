"""Connecting to Ray: a local Ray on this machine by default, or a cluster from config.

Resources for each job (CPUs, GPUs, batch sizes, concurrency) come from config; this
module never inspects the driver's hardware to decide what workers get.
"""

from __future__ import annotations

import logging
import os

from fm21.config import RayConfig

log = logging.getLogger("fm21")


def ensure_ray(cfg: RayConfig) -> None:
    """Start (or connect to) Ray once per process."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs: dict = {"include_dashboard": cfg.include_dashboard, "log_to_driver": False}
    if cfg.address:
        log.info("connecting to Ray cluster at %s", cfg.address)
        ray.init(address=cfg.address, **kwargs)
    else:
        log.info("starting a local Ray (num_cpus=%s)", cfg.num_cpus)
        # address="local": a new Ray of our own. Without it, ray.init() joins the latest
        # cluster started on this machine by `ray start` (e.g. another user's, or a
        # test's simulated cluster) and then refuses num_cpus.
        ray.init(address="local", num_cpus=cfg.num_cpus, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
