"""`fm21 ...`: the command line. Every command takes --config/--recipe/--set/--verbose,
before or after the subcommand.

Examples:

\b
  fm21 run end_to_end                      # the whole pipeline (the embedded default)
  fm21 stage train --set train.steps=50    # one stage, with an override
  fm21 --recipe tiny run build_dataset     # a recipe overlay from configs/
  fm21 stats --labels                      # bytes per sample per column of labels.lance
  fm21 train --address http://HEAD:8265    # the train stage as a job on a Ray cluster
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from fm21.config import ConfigError, FlowConfig, dump_config, load_config
from fm21.store.layout import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")
weights_app = typer.Typer(no_args_is_help=True, help="The specialists' weights: what loads, and the cache.")
app.add_typer(weights_app, name="weights")
train_app = typer.Typer(help="The train stage, here or as a Ray job on a cluster (`fm21 train --address URL`).")
app.add_typer(train_app, name="train")

FLOWS = ("end_to_end", "build_dataset", "pretrain", "evaluate")


class State:
    cfg: FlowConfig | None = None
    verbose: bool = False
    inputs: dict = {}  # config_file, recipe, overrides: what flows resolve themselves


STATE = State()


@app.callback()
def main(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="flows.yaml to load")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="configs/<name>.yaml overlay")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="dotted override key.path=value")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logs; tracebacks on errors")] = False,
) -> None:
    STATE.verbose = verbose
    STATE.inputs = {"config_file": config, "recipe": recipe, "overrides": list(set_ or [])}
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
        first, *rest = [line.strip() for line in str(err).splitlines() if line.strip()]
        typer.echo(f"error: {first} {'; '.join(rest)}".rstrip(), err=True)
        raise typer.Exit(2) from None
    from fm21.progress import TqdmListener, add_listener
    from fm21.stages import apply_threads

    add_listener(TqdmListener)  # a bar per long stage on a terminal; silent in CI logs

    apply_threads(STATE.cfg.threads)  # before torch is imported by any stage


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Any error of a command: one line on stderr, exit status 2 (the traceback with -v)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - the CLI's one place for errors
            if STATE.verbose:
                raise
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            typer.echo(f"error: {message} (fm21 -v ... for the traceback)", err=True)
            raise typer.Exit(2) from None

    return wrapper


GLOBAL_OPTIONS = {"--config": True, "-c": True, "--recipe": True, "-r": True, "--set": True, "-s": True,
                  "--verbose": False, "-v": False}  # option -> takes a value


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move the global options found after the subcommand in front of it, so that
    ``fm21 stage train --set k=v`` means ``fm21 --set k=v stage train``. No subcommand
    defines these names, so the move is unambiguous; ``--`` stops it."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in arg
            front += argv[i:i + 2] if takes_value else [arg]
            i += 2 if takes_value else 1
            continue
        rest.append(arg)
        i += 1
    return front + rest


def _cfg() -> FlowConfig:
    assert STATE.cfg is not None
    return STATE.cfg


@app.command(epilog="Example: mkdir run && cd run && fm21 init && fm21 run end_to_end")
@one_line_errors
def init(
    directory: Annotated[str, typer.Argument(help="where to write flows.yaml")] = ".",
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing flows.yaml")] = False,
) -> None:
    """Write the default flows.yaml (the embedded default) to edit; fm21 then reads it from there."""
    import shutil
    from pathlib import Path

    from fm21.config import DEFAULT_CONFIG

    target = Path(directory) / "flows.yaml"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; --force overwrites it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEFAULT_CONFIG, target)
    typer.echo(f"wrote {target}: edit it, then `fm21 run end_to_end` from {target.parent} "
               f"(recipes: --recipe tiny | 4m21-b)")


@config_app.command("show", epilog="Example: fm21 config show --recipe tiny --set train.steps=10")
def config_show() -> None:
    """Print the resolved configuration (flows.yaml + recipe + overrides)."""
    typer.echo(dump_config(_cfg()), nl=False)


@app.command(epilog="Example: fm21 stage pseudolabel --force --set pseudolabel.concurrency=2")
@one_line_errors
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


@app.command(epilog="Example: fm21 run build_dataset --recipe tiny")
@one_line_errors
def run(
    flow: Annotated[str, typer.Argument(help=" | ".join(FLOWS))] = "end_to_end",
    force: Annotated[bool, typer.Option("--force", help="re-run every stage")] = False,
) -> None:
    """Run a Prefect flow (a temporary local Prefect API when no server is configured)."""
    from fm21.pipelines.flows import run_flow

    if flow not in FLOWS:
        typer.echo(f"error: unknown flow {flow!r}; flows: {', '.join(FLOWS)}", err=True)
        raise typer.Exit(2)
    summary = run_flow(flow, **STATE.inputs, force=["all"] if force else None)
    for name, state in summary.items():
        typer.echo(f"  {name:12s} {state}")
    _echo_outputs(_cfg())


@app.command(epilog="Example: PREFECT_API_URL=http://127.0.0.1:4200/api fm21 serve --recipe tiny")
@one_line_errors
def serve(
    gpu_slots: Annotated[int, typer.Option("--gpu-slots", help="concurrency limit on GPU stages (0: none)")] = 0,
) -> None:
    """Serve the flows as Prefect deployments (start them from the UI); blocks until Ctrl-C.

    Each deployment's default parameters are this command's --config/--recipe/--set; the
    UI form can change them. `make ui` starts a local server and this together."""
    from fm21.pipelines.serve import serve_deployments

    serve_deployments(**STATE.inputs, gpu_slots=gpu_slots)


@app.command(epilog="Example: fm21 ui --port 4200   (then open http://127.0.0.1:4200)")
@one_line_errors
def ui(
    port: Annotated[int, typer.Option("--port", help="loopback port of the Prefect server and UI")] = 4200,
    gpu_slots: Annotated[int, typer.Option("--gpu-slots", help="concurrency limit on GPU stages (0: none)")] = 0,
) -> None:
    """Start a local Prefect server (UI on 127.0.0.1) and serve the flows on it; Ctrl-C stops both."""
    from fm21.pipelines.serve import run_ui

    run_ui(port, **STATE.inputs, gpu_slots=gpu_slots)


def _echo_outputs(cfg: FlowConfig) -> None:
    """Where the run's results are, and the evaluation table if there is one."""
    from fm21.store.layout import Workdir

    wd = Workdir(cfg.workdir)
    typer.echo(f"\nworkdir {wd.root}: shards {wd.shards_dir}, labels {wd.labels_uri}, tokens {wd.tokens_uri}")
    tokenizers = wd.stage_dir("tokenizers") / "report.md"
    if tokenizers.exists():
        typer.echo(f"tokenizers {tokenizers}")
    report = wd.reports_dir / "report.md"
    if report.exists():
        typer.echo(f"report {report} (samples: {wd.reports_dir / 'samples.png'}, loss: {wd.stage_dir('train') / 'loss.png'})")
        verdict = report.read_text().split("## Every metric")[0]  # the headline table only
        typer.echo("\n".join(line for line in verdict.splitlines() if line.startswith("|")))


@app.command(epilog="Example: fm21 stats --json > stats.json; fm21 stats --png stats_png")
@one_line_errors
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    labels: Annotated[bool, typer.Option(
        "--labels", help="labels.lance only: bytes per sample and coverage per column")] = False,
    png: Annotated[Optional[str], typer.Option(
        "--png", metavar="DIR", help="write code-usage and sequence-length histograms of tokens.lance to DIR")] = None,
) -> None:
    """Store statistics: tokens.lance (rows, crops, per-modality coverage, codebook usage,
    perplexity, dead codes, sequence lengths, bytes) and labels.lance (coverage and bytes
    per column), with each store's Lance versions, tags and indices."""
    from fm21.store.layout import Workdir
    from fm21.store.stats import (format_label_stats, format_stats, label_store_stats, scan_token_store,
                                  write_histograms)

    if labels and png is not None:
        raise typer.BadParameter("--png draws the histograms of tokens.lance: drop --labels")
    wd = Workdir(_cfg().workdir)
    uri, stage = (wd.labels_uri, "pseudolabel") if labels else (wd.tokens_uri, "tokens")
    if not uri.exists():
        typer.echo(f"error: no store at {uri}; run `make {stage}` first", err=True)
        raise typer.Exit(1)
    if labels:
        result = label_store_stats(uri, coverage=True)
        text = format_label_stats(result)
    else:
        scan = scan_token_store(uri)
        result = scan.stats  # the token store's stats stay at the top level (`--json` readers)
        label_result = label_store_stats(wd.labels_uri, coverage=True) if wd.labels_uri.exists() else None
        result["labels"] = label_result
        text = format_stats(result) + ("\n\n" + format_label_stats(label_result) if label_result else "")
        if png is not None:
            paths = write_histograms(scan, png)
            typer.echo(f"wrote {len(paths)} histograms to {png}", err=True)
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(text)


@weights_app.command("list", epilog="Example: fm21 weights list --recipe 4m21-b")
@one_line_errors
def weights_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every enabled specialist: its weights mode, source, and whether they are in the cache."""
    from fm21.pseudolabel.weights_status import format_rows, status_rows

    rows = status_rows(_cfg())
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_rows(rows))


@weights_app.command("fetch", epilog="Example: FM21_WEIGHTS_CACHE=/shared/weights fm21 weights fetch --recipe 4m21-b")
@one_line_errors
def weights_fetch(
    names: Annotated[Optional[list[str]], typer.Argument(help="only these specialists")] = None,
) -> None:
    """Download the enabled networks' pretrained weights once into the weights cache
    (FM21_WEIGHTS_CACHE), for workers without network."""
    from fm21.pseudolabel.weights_status import fetch_all

    fetched = fetch_all(_cfg(), names=list(names or []))
    typer.echo(f"fetched: {', '.join(fetched) or 'nothing (all cached, or no pretrained networks enabled)'}")


ADDRESS = typer.Option("--address", "-a", envvar="RAY_API_SERVER_ADDRESS",
                       help="the cluster's Jobs API, http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)")


@train_app.callback(invoke_without_command=True, epilog=(
    "Example: fm21 train --address http://10.0.0.5:8265 --recipe 4m21-b --set train.ray.num_workers=8"))
@one_line_errors
def train(
    ctx: typer.Context,
    address: Annotated[Optional[str], ADDRESS] = None,
    force: Annotated[bool, typer.Option("--force", help="run even if up to date")] = False,
    pinned: Annotated[bool, typer.Option(
        "--pinned-env",
        help="the job builds a virtualenv from constraints.txt (default: the cluster's Python)")] = False,
    no_follow: Annotated[bool, typer.Option("--no-follow", help="submit, print the job id and return")] = False,
) -> None:
    """Run the train stage: here (as `fm21 stage train`), or with --address submit it to a
    Ray cluster through the Jobs API, stream its log and report its status. The workdir must
    then be one the cluster shares (a shared filesystem path or s3://)."""
    if ctx.invoked_subcommand is not None:
        return
    if address is None:
        from fm21.stages import run_stage

        manifest = run_stage(_cfg(), "train", force=force)
        state = "skipped (up to date)" if manifest.get("skipped") else f"done in {manifest['seconds']}s"
        typer.echo(f"train: {state}; counts: {manifest.get('counts')}")
        return
    from fm21.train import jobs

    client = jobs.client(address)
    job_id = jobs.submit(address, _cfg(), force=force, pinned=pinned, jobs=client)
    typer.echo(f"submitted {job_id} to {address} (fm21 train status {job_id}; fm21 train stop {job_id})", err=True)
    if no_follow:
        typer.echo(job_id)
        return
    final = jobs.follow(client, job_id, echo=lambda text: typer.echo(text, nl=False))
    typer.echo(f"{job_id}: {final}")
    if final != "SUCCEEDED":
        raise typer.Exit(1)


@train_app.command("status", epilog="Example: fm21 train status raysubmit_XYZ --address http://HEAD:8265")
@one_line_errors
def train_status(
    job_id: Annotated[str, typer.Argument(help="the id `fm21 train --address` printed")],
    address: Annotated[Optional[str], ADDRESS] = None,
) -> None:
    """A submitted training job's status, message and times."""
    from fm21.train import jobs

    info = jobs.status(jobs.client(_address(address)), job_id)
    typer.echo("\n".join(f"{k:11s} {v}" for k, v in info.items() if v is not None))


@train_app.command("stop", epilog="Example: fm21 train stop raysubmit_XYZ --address http://HEAD:8265")
@one_line_errors
def train_stop(
    job_id: Annotated[str, typer.Argument(help="the id `fm21 train --address` printed")],
    address: Annotated[Optional[str], ADDRESS] = None,
) -> None:
    """Stop a submitted training job (its last checkpoint stays; a resubmission resumes)."""
    from fm21.train import jobs

    stopped = jobs.stop(jobs.client(_address(address)), job_id)
    typer.echo(f"{job_id}: {'stop requested' if stopped else 'not running'}")


# ------------------------------------------------------------------ fm21 import (released 4M models)
import_app = typer.Typer(no_args_is_help=True, help="Import released 4M-21 models and tokenizers into fm21 checkpoints.")
app.add_typer(import_app, name="import")


@import_app.command("4m21", epilog="Example: fm21 import 4m21 --size B --from EPFL-VILAB/4M-21_B --out work/4m21-b")
@one_line_errors
def import_4m21_cmd(
    size: Annotated[str, typer.Option("--size", help="B, L or XL: checked against the release's config")],
    source: Annotated[Optional[str], typer.Option(
        "--from", help="a folder with model.safetensors + config.json, or a Hub id (default EPFL-VILAB/4M-21_<size>)")] = None,
    out: Annotated[str, typer.Option("--out", help="the fm21 checkpoint folder to write")] = "4m21",
) -> None:
    """Convert a released 4M-21 model (apple/ml-4m `fourm/models/fm.py` FM) into an fm21
    checkpoint folder that `fm21.train.checkpoint.load_checkpoint` and evaluation read."""
    from fm21.train.import_4m21 import HUB_IDS, import_4m21

    key = size.upper()
    if key not in HUB_IDS:
        raise typer.BadParameter(f"--size must be one of {', '.join(HUB_IDS)}")
    report = import_4m21(source or HUB_IDS[key], out, size=key)
    typer.echo(json.dumps(report))


def _address(address: Optional[str]) -> str:
    if not address:
        raise typer.BadParameter("give --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    return address


# ---------------------------------------------------------------- fm21 import tokenizer (released weights)
@import_app.command("tokenizer", epilog="Example: fm21 import tokenizer --name EPFL-VILAB/4M_tokenizers_semseg_4k_224-448 "
                    "--out tokenizers/tok_semseg")
@one_line_errors
def import_tokenizer_cmd(
    out: Annotated[str, typer.Option("--out", help="fm21 tokenizer checkpoint folder to write")],
    name: Annotated[Optional[str], typer.Option("--name", help="released hub repo (downloads)")] = None,
    path: Annotated[Optional[str], typer.Option("--path", help="local folder with config.json + model.safetensors")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="fm21 modality (default: the release's)")] = None,
    resolution: Annotated[Optional[int], typer.Option("--resolution", help="fm21 spec resolution (default 224)")] = None,
) -> None:
    """A released 4M tokenizer -> an fm21 tokenizer folder (DiVAEs with their diffusion decoder)."""
    from fm21.tokenize.import_released import import_tokenizer

    report = import_tokenizer(out, name=name, path=path, modality=modality, resolution=resolution)
    random = f"; random (not imported): {', '.join(report['random'])}" if report["random"] else ""
    typer.echo(f"{report['modality']}: {report['family']}, {report['mapped']} tensors mapped, fingerprint "
               f"{report['fingerprint']} -> {out}{random}")


# ---------------------------------------------------------------- fm21 import run (a workdir of released parts)
@import_app.command("run", epilog="Example: fm21 import run --model work/4m21-b --tokenizer tok_rgb=work/tok/rgb "
                    "--tokenizer tok_depth=work/tok/depth --text-tokenizer text_tokenizer_4m_wordpiece_30k.json "
                    "--workdir work/released   (then: fm21 --set workdir=work/released generate ...)")
@one_line_errors
def import_run_cmd(
    model: Annotated[str, typer.Option("--model", help="the folder `fm21 import 4m21` wrote")],
    text_tokenizer: Annotated[str, typer.Option(
        "--text-tokenizer", help="the released text_tokenizer_4m_wordpiece_30k.json (or its folder)")],
    workdir: Annotated[str, typer.Option("--workdir", help="the run folder to lay out (fm21 generate's workdir)")],
    tokenizer: Annotated[Optional[list[str]], typer.Option(
        "--tokenizer", help="MODALITY=DIR of `fm21 import tokenizer` (repeat); a bare DIR names its modality")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the links of an earlier `import run`")] = False,
) -> None:
    """Link an imported 4M checkpoint, imported tokenizers and the released text tokenizer
    into a workdir that `fm21 generate` reads (nothing is copied; the parts are checked
    against each other first)."""
    from fm21.train.released_run import assemble_run, parse_tokenizer_options

    record = assemble_run(workdir, model=model, tokenizers=parse_tokenizer_options(list(tokenizer or [])),
                          text_tokenizer=text_tokenizer, force=force)
    missing = f"; no tokenizer for {', '.join(record['without_tokenizer'])}" if record["without_tokenizer"] else ""
    weights = record["weights"] + (" [random]" if record["random"] else "")
    typer.echo(f"{workdir}: 4M {weights} ({record['num_parameters']} parameters), tokenizers "
               f"{', '.join(record['tokenizers']) or 'none'}{missing}; fm21 --set workdir={workdir} generate ...")


# ---------------------------------------------------------------- fm21 import checkpoint (an import as a run's train output)
@import_app.command("checkpoint", epilog="Example: fm21 import checkpoint --model work/4m21-b --workdir work/mydata "
                    "(then: fm21 --set workdir=work/mydata stage evaluate)")
@one_line_errors
def import_checkpoint_cmd(
    model: Annotated[str, typer.Option("--model", help="the folder `fm21 import 4m21` wrote")],
    workdir: Annotated[str, typer.Option("--workdir", help="a run whose stores and tokenizers exist")],
    force: Annotated[bool, typer.Option("--force", help="point LATEST at the import over the run's own checkpoint")] = False,
) -> None:
    """Make an imported 4M checkpoint the train stage's output of a workdir that has its
    stores, so that `fm21 stage evaluate` scores it (nothing is copied; checked first)."""
    from fm21.train.released_run import adopt_checkpoint

    out = adopt_checkpoint(workdir, model=model, force=force)
    weights = out["weights"] + (" [random]" if out["random"] else "")
    typer.echo(f"{workdir}: train stage = 4M {weights} ({out['num_parameters']} parameters, "
               f"{', '.join(out['modalities'])}); fm21 --set workdir={workdir} stage evaluate")


# ------------------------------------------------------------------------------ generate
@app.command(epilog="Examples:\n\n\b\n"
             "  fm21 generate --cond rgb=img.png --target tok_depth --target caption --out gen\n"
             "  fm21 generate --cond caption='a red cube' --cond metadata='brightness=120' --target tok_semseg\n"
             "  fm21 generate --cond tok_depth=depth.png --preset x2rgb --target tok_rgb --out gen\n"
             "  fm21 generate --batch-dir photos --target tok_depth --out gen\n"
             "  fm21 generate --from-store --where \"split = 'val'\" --limit 4 --cond rgb --target tok_normal\n"
             "  fm21 generate --serve --port 8800   (then open http://127.0.0.1:8800)")
@one_line_errors
def generate(
    cond: Annotated[Optional[list[str]], typer.Option(
        "--cond", help="MODALITY=FILE or MODALITY=TEXT (with --from-store: a bare MODALITY read from the store)")] = None,
    target: Annotated[Optional[list[str]], typer.Option(
        "--target", help="modality to generate; repeat: generated in order, each conditioning the next")] = None,
    out: Annotated[str, typer.Option("--out", help="output folder")] = "generated",
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help="the reference's decoding per target: rgb2x | x2rgb | t2cr (instead of the five below; "
                         "targets in the preset's order, all of its chain when no --target)")] = None,
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="grid decoding: maskgit | roar [maskgit]")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="decoding steps per grid target [8]")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", help="sampling temperature (0: greedy) [1.0]")] = None,
    top_k: Annotated[Optional[float], typer.Option("--top-k", help="keep the k best ids (< 1: a fraction)")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="nucleus sampling mass")] = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="classifier-free guidance scale (1: none) [1.0]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="sampling seed")] = 0,
    batch_dir: Annotated[Optional[str], typer.Option(
        "--batch-dir", help="every image in this folder as the rgb condition")] = None,
    from_store: Annotated[bool, typer.Option("--from-store", help="condition on rows of the run's tokens store")] = False,
    where: Annotated[Optional[str], typer.Option("--where", help="Lance filter on the tokens store")] = None,
    limit: Annotated[int, typer.Option("--limit", help="most store rows to generate from")] = 8,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="samples per sampler call in --batch-dir / --from-store (same results, faster)")] = 16,
    serve_page: Annotated[bool, typer.Option("--serve", help="serve the local generation page instead")] = False,
    port: Annotated[int, typer.Option("--port", help="loopback port of the page")] = 8800,
) -> None:
    """Generate any modalities of a trained run from any given ones (files or text)."""
    from pathlib import Path

    from fm21.generate import driver
    from fm21.generate.inputs import parse_assignment
    from fm21.generate.run import GenerateError, open_run

    run = open_run(_cfg().workdir)
    if serve_page:
        from fm21.generate.page import serve as serve_generation_page

        typer.echo(f"fm21 generate: http://127.0.0.1:{port} (Ctrl-C stops)")
        serve_generation_page(run, port=port)
        return
    decoding = {"--scheme": scheme, "--steps": steps, "--temperature": temperature, "--top-k": top_k,
                "--top-p": top_p, "--cfg": cfg}
    if preset is not None:
        given_flags = [flag for flag, value in decoding.items() if value is not None]
        if given_flags:
            raise GenerateError(f"--preset {preset} sets how every target is decoded; drop {', '.join(given_flags)}")
        settings = driver.Settings(seed=seed, preset=preset)
    else:
        settings = driver.Settings(scheme=scheme or "maskgit", num_steps=8 if steps is None else steps,
                                   temperature=1.0 if temperature is None else temperature,
                                   top_k=driver.top_k_value(top_k), top_p=top_p,
                                   cfg_scale=1.0 if cfg is None else cfg, seed=seed)
    items = list(cond or [])
    stored = [c for c in items if "=" not in c] if from_store else []
    given = driver.given_conditions(run, [parse_assignment(c) for c in items if c not in stored])
    targets, out_dir = list(target or []), Path(out)
    if from_store and batch_dir:
        raise GenerateError("give --batch-dir or --from-store, not both")
    if from_store:
        result = driver.generate_from_store(run, stored, given, targets, settings, out_dir, where=where, limit=limit,
                                            batch_size=batch_size)
    elif batch_dir:
        result = driver.generate_folder(run, Path(batch_dir), given, targets, settings, out_dir,
                                        batch_size=batch_size)
    else:
        result = driver.generate_sample(run, given, targets, settings, out_dir)
    count = result.get("num_samples", 1)
    note = f" [random weights: {', '.join(result['random_parts'])}]" if result.get("random_parts") else ""
    typer.echo(f"generated {', '.join(result['targets'])} for {count} sample(s) into {out_dir}{note}")


def main_cli(argv: list[str] | None = None) -> Any:
    """The console script: global options anywhere, then the Typer app."""
    return app(args=hoist_global_options(list(sys.argv[1:] if argv is None else argv)), prog_name="fm21")


def entrypoint() -> None:  # pragma: no cover - console script shim
    sys.exit(main_cli())


if __name__ == "__main__":  # python -m fm21.cli
    main_cli()
