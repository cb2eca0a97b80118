"""Compare runs side by side, and aggregate them over sets (mean ± std): the number a paper reports.

``python -m broadclass.compare TARGET`` (:mod:`broadclass.compare`; ``python -m broadclass.report compare=TARGET``
is the same).
TARGET is a sweep folder (``outputs/<experiment>/multiruns/<time>``: the runs tagged ``sweep/dir`` with
it), an MLflow experiment name (all its runs), or a sweep id (the runs tagged ``sweep/id``, the sweep
folder's name). The tracking store is ``tracking_uri=``, else ``MLFLOW_TRACKING_URI``, else the
``mlflow.db`` nearest above a sweep folder, else ``<project>/mlflow.db``.

Two tables, printed as Markdown and written to ``out=`` (default: the sweep folder, or
``outputs/comparison/<target>``) as ``comparison.md``, ``runs.csv`` and ``aggregate.csv``:

* runs: one row per run with the overrides that differ between runs as columns (those shared by all
  runs are listed above the table); the monitored metric's best value (and its step) and final value;
  accuracy, WER and TER at that best step (the checkpoint ``test_after_fit`` evaluates) and at the end;
  and the ``test/`` metrics of the best checkpoint where they were logged.
* aggregate: finished runs grouped by their overrides apart from the set (``+experiment=onSet<k>``,
  ``data.manifests_from.set_name``) and any ``over=`` keys (e.g. ``over=seed``); mean ± sample std of each best and
  test metric over the group (``n`` runs, which sets).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from broadclass.config import project_root
from broadclass.data.markdown import markdown_table
from broadclass.tracking.store import default_tracking_uri

DEFAULT_MONITOR = ("val/macro_avg/f1", "max")
REPORTED = ("val/accuracy", "val/wer", "val/ter")
# The config key naming a run's set (data=onset): runs that differ only in it are one configuration.
SET_KEY = "data.manifests_from.set_name"
SET_EXPERIMENT = re.compile(r"^(onSet)\d+$")
# An override starts where a ``key=`` follows whitespace: values may hold spaces (``[{name: a, tag: a}]``).
OVERRIDE_START = re.compile(r"\s+(?=[+~]{0,2}[A-Za-z_][\w.@/-]*=)")


class CompareError(ValueError):
    """Nothing to compare; the message says what was looked for and where."""


# ---- finding runs ----------------------------------------------------------------------------------
def _search(client: MlflowClient, experiment_ids: list[str], where: str = "") -> list[Run]:
    if not experiment_ids:
        return []
    return list(client.search_runs(experiment_ids, filter_string=where, order_by=["attributes.start_time ASC"]))


def find_runs(client: MlflowClient, target: str) -> list[Run]:
    """Runs of a sweep folder, an experiment name or a sweep id (in that order of trial)."""
    experiments = client.search_experiments()
    everywhere = [e.experiment_id for e in experiments]
    named = [e.experiment_id for e in experiments if e.name == target]
    if Path(target).is_dir():
        # A sweep over experiment files (+experiment=onSet1,onSet2) puts its jobs under the jobs' own
        # experiment name, not under the folder Hydra prints: the folder's name (the sweep id) finds them.
        folder = Path(target).resolve()
        runs = _search(client, everywhere, f"tags.\"sweep/dir\" = '{folder}'") or _search(
            client, everywhere, f"tags.\"sweep/id\" = '{folder.name}'"
        )
    elif named:
        runs = _search(client, named)
    else:
        runs = _search(client, everywhere, f"tags.\"sweep/id\" = '{target}'")
    if not runs:
        names = ", ".join(sorted(e.name for e in experiments)) or "none"
        raise CompareError(
            f"no runs found for {target!r} (as a sweep folder, an experiment name or a sweep id) in "
            f"{client.tracking_uri}; experiments there: {names}"
        )
    return in_sweep_order(runs)


def in_sweep_order(runs: Sequence[Run]) -> list[Run]:
    """Sweeps (and single runs) in the order they started; a sweep's runs by job number.

    The parallel jobs of a sweep start in any order, so start times alone would shuffle them.
    """
    sweep_start: dict[str, int] = {}
    for run in runs:
        sweep = run.data.tags.get("sweep/id", run.info.run_id)
        sweep_start[sweep] = min(sweep_start.get(sweep, run.info.start_time), run.info.start_time)

    def key(run: Run) -> tuple[int, int, int]:
        job = run.data.tags.get("sweep/job", "")
        start = sweep_start[run.data.tags.get("sweep/id", run.info.run_id)]
        return start, int(job) if job.isdigit() else -1, run.info.start_time

    return sorted(runs, key=key)


# ---- one run ---------------------------------------------------------------------------------------
def parse_overrides(text: str) -> dict[str, str]:
    """``"+experiment=demo model.lr=0.001"`` → ``{"+experiment": "demo", "model.lr": "0.001"}``."""
    pairs = [item.split("=", 1) for item in OVERRIDE_START.split(text.strip()) if "=" in item]
    return {key: value for key, value in pairs}


def set_of(run: Run) -> str | None:
    return run.data.params.get(SET_KEY.replace(".", "/"))  # MLflow params are the config keys with "/"


def group_key(overrides: Mapping[str, str], over: Iterable[str] = (), shared: Iterable[str] = ()) -> str:
    """The overrides that identify a configuration across sets: the set, ``over`` and ``shared`` keys removed."""
    ignored = {SET_KEY, *over, *shared}
    kept = []
    for key, value in sorted(overrides.items()):
        if key in ignored:
            continue
        if key.lstrip("+~") == "experiment":
            value = SET_EXPERIMENT.sub(r"\1*", value)
        kept.append(f"{key}={value}")
    return " ".join(kept)


def _best(history: Sequence, mode: str):
    """The best entry of a metric history; the earliest step among equals (as the checkpoint keeps)."""
    sign = 1 if mode == "max" else -1
    return max(history, key=lambda m: (sign * m.value, -m.step))


def summarize_run(client: MlflowClient, run: Run) -> dict:
    params, tags = run.data.params, run.data.tags
    monitor = params.get("monitor/metric", DEFAULT_MONITOR[0])
    mode = params.get("monitor/mode", DEFAULT_MONITOR[1])
    row: dict = {
        "run": run.info.run_name,
        "run_id": run.info.run_id,
        "job": tags.get("sweep/job", ""),
        "set": set_of(run) or "",
        "status": run.info.status,
        "overrides": parse_overrides(tags.get("hydra/overrides", "")),
    }
    history = sorted(client.get_metric_history(run.info.run_id, monitor), key=lambda m: (m.step, m.timestamp))
    best = _best(history, mode) if history else None
    row["steps"] = history[-1].step if history else None
    row["best step"] = best.step if best else None
    row[f"{monitor} best"] = best.value if best else None
    row[f"{monitor} final"] = history[-1].value if history else None
    for name in (m for m in REPORTED if m != monitor):
        values = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: (m.step, m.timestamp))
        at_best = [m.value for m in values if best is not None and m.step == best.step]
        row[f"{name} @best"] = at_best[-1] if at_best else None
        row[f"{name} final"] = values[-1].value if values else None
    test_monitor = "test/" + monitor.split("/", 1)[-1]
    for name in dict.fromkeys([test_monitor, *("test/" + m.split("/", 1)[-1] for m in REPORTED)]):
        row[name] = run.data.metrics.get(name)
    return row


# ---- tables ----------------------------------------------------------------------------------------
def runs_table(rows: Sequence[dict]) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per run with the varying overrides as columns; also the overrides all runs share."""
    keys = sorted({key for row in rows for key in row["overrides"]})
    shared = {
        key: rows[0]["overrides"][key]
        for key in keys
        if all(key in row["overrides"] and row["overrides"][key] == rows[0]["overrides"][key] for row in rows)
    }
    varying = [key for key in keys if key not in shared]
    records = []
    for row in rows:
        record = {k: row[k] for k in ("run", "run_id", "job", "set")}
        record.update({key: row["overrides"].get(key, "") for key in varying})
        record.update({k: v for k, v in row.items() if k not in {"run", "run_id", "job", "set", "overrides"}})
        records.append(record)
    table = pd.DataFrame.from_records(records).astype({"steps": "Int64", "best step": "Int64"})
    table = table.drop(columns=[c for c in ("job", "set") if (table[c] == "").all()])
    table = table.drop(columns=[c for c in table.columns if c.startswith("test/") and table[c].isna().all()])
    return table, shared


def aggregate_table(rows: Sequence[dict], over: Iterable[str] = (), shared: Iterable[str] = ()) -> pd.DataFrame:
    """Finished runs grouped by configuration apart from the set: n, sets, mean and std per metric.

    A configuration is named by its overrides less those in ``shared`` (the ones every run has).
    """
    over = list(over)
    finished = [row for row in rows if row["status"] == "FINISHED"]
    groups: dict[str, list[dict]] = {}
    for row in finished:
        groups.setdefault(group_key(row["overrides"], over, shared), []).append(row)
    metrics = [
        key
        for key in (finished[0] if finished else {})
        if (key.endswith((" best", " @best")) or key.startswith("test/")) and any(r[key] is not None for r in finished)
    ]
    records = []
    for key, members in groups.items():
        record: dict = {"configuration": key or "(all runs)", "n": len(members)}
        record["sets"] = " ".join(sorted({m["set"] for m in members if m["set"]})) or ""
        for metric in metrics:
            values = [m[metric] for m in members if m[metric] is not None and not math.isnan(m[metric])]
            record[f"{metric} mean"] = statistics.fmean(values) if values else None
            record[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else None
        records.append(record)
    return pd.DataFrame.from_records(records)


def _cell(value) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # None, NaN and pandas' NA
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def frame_markdown(table: pd.DataFrame) -> str:
    return markdown_table(list(table.columns), [[_cell(v) for v in row] for row in table.itertuples(index=False)])


def aggregate_markdown(aggregate: pd.DataFrame) -> str:
    """Mean ± std columns merged into one cell each."""
    merged = aggregate[["configuration", "n", "sets"]].copy()
    for column in aggregate.columns:
        if column.endswith(" mean"):
            name, std = column[: -len(" mean")], aggregate[column[: -len(" mean")] + " std"]
            merged[name] = [
                _cell(m) + (f" ± {s:.3f}" if s is not None and not math.isnan(s) else "")
                for m, s in zip(aggregate[column], std, strict=True)
            ]
    if not merged["sets"].astype(bool).any():
        merged = merged.drop(columns=["sets"])
    return frame_markdown(merged)


def compare(target: str, tracking_uri: str | None = None, over: Iterable[str] = ()) -> dict:
    """The comparison of ``target``'s runs: the two tables, the shared overrides and the Markdown report."""
    uri = tracking_uri or default_tracking_uri(target)
    client = MlflowClient(uri)
    rows = [summarize_run(client, run) for run in find_runs(client, target)]
    runs, shared = runs_table(rows)
    aggregate = aggregate_table(rows, over, shared)
    lines = [f"# Comparison: {target}", "", f"{len(rows)} run(s) in {uri}."]
    if shared:
        lines += ["", "Overrides shared by every run: " + " ".join(f"`{k}={v}`" for k, v in shared.items())]
    lines += ["", "## Runs", "", frame_markdown(runs.drop(columns=["run_id"]))]
    lines += ["", f"## Mean ± std over sets{' and ' + ', '.join(over) if over else ''} (finished runs)", ""]
    if not len(aggregate):
        lines.append("No finished runs.")
    elif aggregate["n"].max() == 1:
        lines.append("Every configuration has one finished run: nothing to aggregate.")
    else:
        lines.append(aggregate_markdown(aggregate))
    return {"runs": runs, "aggregate": aggregate, "shared": shared, "markdown": "\n".join(lines) + "\n"}


def default_out(target: str) -> Path:
    if Path(target).is_dir():
        return Path(target)
    return project_root() / "outputs" / "comparison" / re.sub(r"[^\w.-]+", "_", target)


def output_paths(out: Path) -> dict[str, Path]:
    """A folder gets comparison.md, runs.csv, aggregate.csv; a ``.md`` file gets its CSVs beside it."""
    if out.suffix == ".md":
        return {
            "markdown": out,
            "runs": out.with_name(f"{out.stem}_runs.csv"),
            "aggregate": out.with_name(f"{out.stem}_aggregate.csv"),
        }
    return {"markdown": out / "comparison.md", "runs": out / "runs.csv", "aggregate": out / "aggregate.csv"}


def write_comparison(
    target: str, tracking_uri: str | None = None, out: Path | None = None, over: Iterable[str] = ()
) -> tuple[str, list[Path]]:
    """The comparison of ``target``'s runs (:func:`compare`) written to ``out`` as Markdown and CSV.

    ``out``: a folder, or a ``.md`` file with the CSVs beside it; default :func:`default_out`. Returns the
    Markdown and the files written; raises :class:`CompareError` when there is nothing to compare.
    """
    result = compare(target, tracking_uri, over)
    paths = output_paths(Path(out or default_out(target)))
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(result["markdown"], encoding="utf-8")
    result["runs"].to_csv(paths["runs"], index=False)
    result["aggregate"].to_csv(paths["aggregate"], index=False)
    return result["markdown"], list(paths.values())
