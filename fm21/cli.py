"""`fm21 ...`: the command line. Every command takes --config/--recipe/--set."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from fm21.config import ConfigError, FlowConfig, dump_config, load_config
from fm21.store.layout import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

FLOWS = ("end_to_end", "build_dataset", "pretrain", "evaluate")


class State:
    cfg: FlowConfig | None = None


STATE = State()


@app.callback()
def main(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="flows.yaml to load")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="configs/<name>.yaml overlay")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="dotted override key.path=value")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        STATE.cfg = load_config(config, recipe=recipe, overrides=set_)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    from fm21.stages import apply_threads

    apply_threads(STATE.cfg.threads)  # before torch is imported by any stage


def _cfg() -> FlowConfig:
    assert STATE.cfg is not None
    return STATE.cfg


@config_app.command("show")
def config_show() -> None:
    """Print the resolved configuration (flows.yaml + recipe + overrides)."""
    typer.echo(dump_config(_cfg()), nl=False)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=" | ".join(STAGES))],
    force: Annotated[bool, typer.Option("--force", help="run even if up to date")] = False,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="pseudolabel: also re-run only the samples recorded as failed")] = False,
) -> None:
    """Run one stage (skipped when its manifest matches its inputs)."""
    from fm21.stages import run_stage

    if name not in STAGES:
        typer.echo(f"error: unknown stage {name!r}; stages: {', '.join(STAGES)}", err=True)
        raise typer.Exit(2)
    cfg = _cfg()
    if retry_failed:  # the same as --set pseudolabel.retry_failed=true
        cfg = cfg.model_copy(update={"pseudolabel": cfg.pseudolabel.model_copy(update={"retry_failed": True})})
    manifest = run_stage(cfg, name, force=force)
    state = "skipped (up to date)" if manifest.get("skipped") else f"done in {manifest['seconds']}s"
    typer.echo(f"{name}: {state}; counts: {manifest.get('counts')}")


@app.command()
def run(
    flow: Annotated[str, typer.Argument(help=" | ".join(FLOWS))] = "end_to_end",
    force: Annotated[bool, typer.Option("--force", help="re-run every stage")] = False,
) -> None:
    """Run a Prefect flow (a temporary local Prefect API when no server is configured)."""
    from fm21.pipelines.flows import run_flow

    if flow not in FLOWS:
        typer.echo(f"error: unknown flow {flow!r}; flows: {', '.join(FLOWS)}", err=True)
        raise typer.Exit(2)
    summary = run_flow(flow, _cfg(), force=force)
    for name, state in summary.items():
        typer.echo(f"  {name:12s} {state}")
    _echo_outputs(_cfg())


def _echo_outputs(cfg: FlowConfig) -> None:
    """Where the run's results are, and the evaluation table if there is one."""
    from pathlib import Path

    from fm21.store.layout import Workdir

    wd = Workdir(Path(cfg.workdir))
    typer.echo(f"\nworkdir {wd.root}: shards {wd.shards_dir}, labels {wd.labels_uri}, tokens {wd.tokens_uri}")
    report = wd.reports_dir / "report.md"
    if report.exists():
        typer.echo(f"report {report} (samples: {wd.reports_dir / 'samples.png'}, loss: {wd.stage_dir('train') / 'loss.png'})")
        verdict = report.read_text().split("## Every metric")[0]  # the headline table only
        typer.echo("\n".join(line for line in verdict.splitlines() if line.startswith("|")))


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    labels: Annotated[bool, typer.Option("--labels", help="labels.lance: bytes per sample per column")] = False,
) -> None:
    """Token-store statistics: rows, per-modality coverage, codebook usage, perplexity, bytes."""
    from pathlib import Path

    from fm21.store.layout import Workdir
    from fm21.store.stats import format_label_stats, format_stats, label_store_stats, token_store_stats

    wd = Workdir(Path(_cfg().workdir))
    uri, stage = (wd.labels_uri, "pseudolabel") if labels else (wd.tokens_uri, "tokens")
    if not uri.exists():
        typer.echo(f"error: no store at {uri}; run `make {stage}` first", err=True)
        raise typer.Exit(1)
    result = label_store_stats(uri) if labels else token_store_stats(uri)
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(format_label_stats(result) if labels else format_stats(result))


def entrypoint() -> None:  # pragma: no cover - console script shim
    sys.exit(app())
if __name__ == "__main__":  # python -m fm21.cli
    app()
