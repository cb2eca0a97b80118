"""``python -m broadclass.report``: the model card of a real training run, read from its MLflow store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jiwer
import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import DictConfig
from scipy.stats import binomtest

from broadclass.metrics.errors import strip_tags
from broadclass.report import main
from broadclass.train import train
from tests.helpers.browser import OpenPage, page_json
from tests.helpers.config import compose_config, demo_overrides

CATEGORIES = ["male", "female", "whisper", "creaky"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_corpus, empty_mlflow_db) -> tuple[DictConfig, MlflowClient, str]:
    """10 optimizer steps, validated at 5 and 10, then the test of the best checkpoint; training loss
    logged every 2 steps, so a row's training loss is the one logged at or before its step."""
    root = tmp_path_factory.mktemp("report")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    steps = ["trainer.max_steps=10", "val_every_n_optimizer_steps=5", "trainer.log_every_n_steps=2"]
    cfg = compose_config(root, [*demo_overrides(demo_corpus), *steps])
    train(cfg)
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (found,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    return cfg, client, found.info.run_id


def card_of(ref: str, uri: str, tmp_path: Path) -> str:
    out = tmp_path / "card.md"
    assert main([ref, f"tracking_uri={uri}", f"out={out}"]) == 0
    return out.read_text(encoding="utf-8")


def results_table(card: str) -> list[dict[str, str]]:
    """The "Training results" table as one dict per row, keyed by the column headers."""
    section = card.split("### Training results", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header, *rows = ([cell.strip() for cell in line.strip("|").split(" | ")] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]  # rows[0]: the alignment row


def history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]


def test_card_has_one_row_per_validation_with_the_logged_values(run, tmp_path):
    cfg, client, run_id = run
    assert_rows_are_the_logged_values(card_of(run_id, client.tracking_uri, tmp_path), client, run_id)


def assert_rows_are_the_logged_values(card: str, client: MlflowClient, run_id: str) -> None:
    rows = results_table(card)
    assert [int(row["Step"]) for row in rows] == [5, 10]
    columns = {"Validation Loss": "val/loss", "Accuracy": "val/accuracy", "Wer": "val/wer", "Ter": "val/ter"}
    for name in CATEGORIES:
        columns.update({f"{name} {field.capitalize()}": f"val/{name}/{field}" for field in ("precision", "recall")})
        columns[f"{name} F1"] = f"val/{name}/f1"
    for average, label in (("macro_avg", "Macro"), ("weighted_avg", "Weighted")):
        columns.update(
            {f"{label} {field}": f"val/{average}/{field.lower()}" for field in ("Precision", "Recall", "F1")}
        )
    columns.update({f"Accuracy ({rule})": f"val/rule/{rule}/accuracy" for rule in ("vote", "posterior")})
    train_loss = history(client, run_id, "train/loss")
    for row in rows:
        step = int(row["Step"])
        for column, metric in columns.items():
            (value,) = [v for s, v in history(client, run_id, metric) if s == step]
            assert row[column] == f"{value:.4f}", (step, column)
        for name in CATEGORIES:
            (support,) = [v for s, v in history(client, run_id, f"val/{name}/support") if s == step]
            assert row[f"{name} Support"] == str(int(support))
        latest = [v for s, v in train_loss if s <= step][-1]
        assert row["Training Loss"] == f"{latest:.4f}"
        assert row["Epoch"].isdigit()


def test_card_lists_the_hyperparameters_and_the_category_names(run, tmp_path):
    cfg, client, run_id = run
    card = card_of(run_id, client.tracking_uri, tmp_path)
    for line in (
        f"- learning_rate: {cfg.model.lr}",
        f"- train_batch_size: {cfg.data.batch_size}",
        f"- eval_batch_size: {cfg.data.eval_batch_size}",
        f"- seed: {cfg.seed}",
        "- gradient_accumulation_steps: 1",
        f"- total_train_batch_size: {cfg.data.batch_size}",
        "- optimizer: AdamW (torch) with betas=(0.9,0.999), epsilon=1e-08 and weight_decay=0.0",
        "- lr_scheduler_type: linear",
        f"- lr_scheduler_warmup_steps: {cfg.model.warmup_steps}",
        "- training_steps: 10",
        f"- mixed_precision_training: {cfg.trainer.precision}",
        "- primary_rule: posterior",
        "- eval_steps: 5 optimizer steps",
    ):
        assert line in card.splitlines(), line
    # The full report and the confusion matrix of the test (best checkpoint), rows named by category.
    test = card.split("### Test (best checkpoint, step ", 1)[1]
    assert "| true \\ predicted | male | female | whisper | creaky |" in test
    for name in CATEGORIES:
        assert f"\n| {name} | " in test and f"| **{name}** |" in test
    assert "It achieves the following results on the test evaluation" in card


def test_card_names_the_rule_and_what_built_the_manifests_from_the_logged_config(run, tmp_path):
    # The card reads the run's logged config: another rule and another data.manifests_from show on it.
    _, client, run_id = run
    config = yaml.safe_load(Path(client.download_artifacts(run_id, "config/config.yaml", str(tmp_path))).read_text())
    assert config["model"]["primary_rule"] == "posterior"
    config["model"]["primary_rule"] = "vote"
    config["data"]["manifests_from"] = {
        "_target_": "broadclass.data.sets.locate_set",
        "set_dir": "sets",
        "set_name": "set2",
    }
    experiment = client.create_experiment("set-two", artifact_location=(tmp_path / "artifacts").as_uri())
    other = client.create_run(experiment, run_name="set-two").info.run_id
    client.log_text(other, yaml.safe_dump(config), "config/config.yaml")
    client.set_terminated(other)
    card = card_of(other, client.tracking_uri, tmp_path)
    assert "- primary_rule: vote" in card.splitlines()
    assert "by the primary decision rule `vote`." in card
    assert "- Built by `broadclass.data.sets.locate_set` (set_dir=sets, set_name=set2)" in card.splitlines()


def test_card_is_logged_to_the_run_when_training_ends(run, tmp_path):
    cfg, client, run_id = run
    logged = Path(client.download_artifacts(run_id, "model_card.md", str(tmp_path))).read_text(encoding="utf-8")
    # Written after the test, with what the run logged up to then: each validation's row, and the test's numbers.
    assert_rows_are_the_logged_values(logged, client, run_id)
    test = logged.split("### Test (best checkpoint, step ", 1)[1]
    for line, metric in (("Accuracy", "test/accuracy"), ("Wer", "test/wer"), ("Ter", "test/ter")):
        (value,) = [v for _, v in history(client, run_id, metric)]
        assert f"- {line}: {value:.4f}" in test.splitlines(), (line, value)
    # The same card as one made from the finished run by `python -m broadclass.report`.
    assert logged == card_of(run_id, client.tracking_uri, tmp_path)


def test_run_is_found_by_its_name(run, tmp_path):
    cfg, client, run_id = run
    name = client.get_run(run_id).info.run_name
    assert card_of(name, client.tracking_uri, tmp_path) == card_of(run_id, client.tracking_uri, tmp_path)


def test_unknown_run_is_an_error_naming_the_store(run, capsys):
    cfg, client, run_id = run
    assert main(["no-such-run", f"tracking_uri={client.tracking_uri}"]) == 2
    assert f"no run with id or name 'no-such-run' in {client.tracking_uri}" in capsys.readouterr().err


def test_ambiguous_run_name_lists_the_matching_run_ids(run, capsys):
    cfg, client, run_id = run
    experiment = client.get_run(run_id).info.experiment_id
    twins = [client.create_run(experiment, run_name="twin").info.run_id for _ in range(2)]
    assert main(["twin", f"tracking_uri={client.tracking_uri}"]) == 2
    err = capsys.readouterr().err
    assert "2 runs are named 'twin'" in err
    assert all(twin in err for twin in twins)


def test_missing_sqlite_store_is_an_error_not_a_new_empty_store(tmp_path, capsys):
    store = tmp_path / "nowhere.db"
    assert main(["some-run", f"tracking_uri=sqlite:///{store}"]) == 2
    assert f"no MLflow store at {store}" in capsys.readouterr().err
    assert not store.exists()


def test_card_has_the_error_analysis_with_intervals_from_the_logged_predictions(run, tmp_path):
    cfg, client, run_id = run
    card = card_of(run_id, client.tracking_uri, tmp_path)
    test = card.split("### Test (best checkpoint, step ", 1)[1]
    assert "95% bootstrap intervals over" in test and "#### Broad classes" in test
    row = next(line for line in test.splitlines() if line.startswith("| ter |"))
    # The interval's point value is the logged test TER.
    (ter,) = [v for _, v in history(client, run_id, "test/ter")]
    value, interval = (cell.strip() for cell in row.strip("|").split("|")[1:3])
    low, high = (float(x) for x in interval.strip("[]").split(","))
    assert float(value) == pytest.approx(ter, abs=1e-4) and low <= float(value) <= high
    for name in ("vowel", "plosive", "fricative", "nasal", "approximant"):
        assert f"| {name} | all | " in test


def copy_of_the_test_with_other_predictions(client, run_id, tmp_path, name, change) -> str:
    """A new run in the same experiment holding the run's config and test report, with each logged test
    prediction passed through ``change``: another model scored on the same utterances."""
    (folder,) = [a.path for a in client.list_artifacts(run_id, "test") if a.is_dir]
    report = Path(client.download_artifacts(run_id, f"{folder}/report.json", str(tmp_path))).read_text()
    lines = Path(client.download_artifacts(run_id, f"{folder}/predictions.jsonl", str(tmp_path))).read_text()
    config = Path(client.download_artifacts(run_id, "config/config.yaml", str(tmp_path))).read_text()
    other = client.create_run(client.get_run(run_id).info.experiment_id, run_name=name).info.run_id
    client.log_text(other, config, "config/config.yaml")
    client.log_text(other, report, f"{folder}/report.json")
    changed = [json.dumps(change(json.loads(line))) for line in lines.splitlines()]
    client.log_text(other, "\n".join(changed) + "\n", f"{folder}/predictions.jsonl")
    client.set_terminated(other)
    return other


def test_compare_two_runs_gives_the_paired_tests_of_scipy_and_jiwer(run, tmp_path, capsys):
    cfg, client, run_id = run
    name = client.get_run(run_id).info.run_name
    (folder,) = [a.path for a in client.list_artifacts(run_id, "test") if a.is_dir]
    lines = Path(client.download_artifacts(run_id, f"{folder}/predictions.jsonl", str(tmp_path))).read_text()
    predictions = [json.loads(line) for line in lines.splitlines()]
    rule = cfg.model.primary_rule
    right = [p["predicted"][rule] == p["category"] for p in predictions]
    # Run B: every transcription right; every category right but the first two that A got right.
    spoilt = {p["id"] for p, ok in zip(predictions, right, strict=True) if ok}
    spoilt = set(sorted(spoilt)[:2])

    def better(p: dict) -> dict:
        wrong = (p["category"] + 1) % len(CATEGORIES)
        return {**p, "hypothesis": p["reference"], "predicted": {rule: wrong if p["id"] in spoilt else p["category"]}}

    copy_of_the_test_with_other_predictions(client, run_id, tmp_path, "run-b", better)
    out = tmp_path / "paired.md"
    assert main([f"compare={run_id}", "run-b", f"tracking_uri={client.tracking_uri}", f"out={out}"]) == 0
    text = out.read_text(encoding="utf-8")
    assert f"## {name} vs run-b" in text
    only_a, only_b = len(spoilt), right.count(False)
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue
    n = len(predictions)
    assert (
        f"{name} alone right {only_a}, run-b alone right {only_b}, p = {p_value:.4g} "
        f"(accuracy {right.count(True) / n:.4f} vs {(n - only_a) / n:.4f})"
    ) in text
    # TER(A) − TER(B) is A's TER (jiwer's, over the class tags), since B transcribes every utterance right.
    strip = lambda text: " ".join(t.rpartition("_")[0] for t in text.split() if t != "|")  # noqa: E731
    ter = jiwer.wer([strip(p["reference"]) for p in predictions], [strip(p["hypothesis"]) for p in predictions])
    assert ter > 0
    assert f"TER({name}) − TER(run-b) = +{ter:.4f}" in text
    assert re.search(r"\| ter \| [0-9.]+ \| [^|]+ \| 0\.0000 \|", text)  # B's TER in the table
    # Against itself, nothing tells the runs apart.
    assert main([f"compare={run_id}", name, f"tracking_uri={client.tracking_uri}", f"out={out}"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "alone right 0" in text and "p = 1 " in text and "= +0.0000" in text
    assert main([f"compare={run_id}", "no-such-run", f"tracking_uri={client.tracking_uri}"]) == 2
    assert "no run with id or name 'no-such-run'" in capsys.readouterr().err


@pytest.mark.slow  # a training run and a browser
@pytest.mark.timeout(900)
def test_compare_two_runs_writes_both_runs_error_browser_opened_where_they_disagree(run, tmp_path, browser):
    cfg, client, run_id = run
    name = client.get_run(run_id).info.run_name
    rule = cfg.model.primary_rule
    changed = set()

    def other_model(p: dict) -> dict:
        # Every third utterance transcribed right, every fourth decided as the next category.
        n = int(p["id"].rsplit("-", 1)[1])
        hypothesis = p["reference"] if n % 3 == 0 else p["hypothesis"]
        decided = (p["predicted"][rule] + 1) % len(CATEGORIES) if n % 4 == 0 else p["predicted"][rule]
        if strip_tags(hypothesis.split()) != strip_tags(p["hypothesis"].split()) or decided != p["predicted"][rule]:
            changed.add(p["id"])
        return {**p, "hypothesis": hypothesis, "predicted": {rule: decided}}

    copy_of_the_test_with_other_predictions(client, run_id, tmp_path, "run-c", other_model)
    out = tmp_path / "paired.md"
    assert main(["compare=" + run_id, "run-c", f"tracking_uri={client.tracking_uri}", f"out={out}"]) == 0
    page_file = out.with_suffix(".error_browser.html")
    data = page_json(page_file.read_text(encoding="utf-8"))
    (folder,) = [a.path for a in client.list_artifacts(run_id, "test") if a.is_dir]
    assert data["runs"] == [f"{name} ({folder})", f"run-c ({folder})"] and data["rules"] == [rule]
    assert changed and all(len(u["runs"]) == 2 for u in data["utterances"])
    # The audio is the first run's (its manifest, from its dataset inputs).
    assert all(u["audio"] for u in data["utterances"])
    opened = OpenPage(browser, page_file.as_uri())
    assert sorted(opened.shown_ids()) == sorted(changed)
    opened.page.click(f'#utterances tr[data-id="{sorted(changed)[0]}"]')
    assert opened.page.locator("#detail .side").count() == 2
    opened.page.select_option("#filter-decision", "")
    assert len(opened.shown_ids()) == len(data["utterances"])
    assert opened.errors == [] and opened.requests == []
    opened.context.close()


def test_card_of_a_run_by_seconds_names_the_seconds_not_the_unused_row_count(tmp_path):
    from omegaconf import OmegaConf

    from broadclass.tracking.run_card import RunRecord, _hyperparameters
    from tests.helpers.config import compose_config

    overrides = ["+experiment=demo", "data.batch_seconds=60", "data.batch_quadratic_duration=20"]
    config = OmegaConf.to_container(compose_config(tmp_path, overrides), resolve=True)
    lines = _hyperparameters(RunRecord(run=None, config=config, histories={}, client=None)).splitlines()
    assert "- train_batch_seconds: 60" in lines and "- batch_quadratic_duration: 20" in lines
    assert f"- eval_batch_size: {config['data']['eval_batch_size']}" in lines
    assert not [line for line in lines if line.startswith(("- train_batch_size", "- total_train_batch_size"))]
