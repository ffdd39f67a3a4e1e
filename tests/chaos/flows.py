"""The flows of issue 11, manual approval and a champion re-score: each a short script of inputs and what its
fault-free run must end with.

Each flow has its own policy, scoped to the hops it exercises (the upload flows have no retraining,
the retraining flows no promotion), so a non-converging schedule points at one flow's code.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from shared.config.policy import Policy, parse_policy
from shared.domain.decay import degradation_trigger
from shared.domain.events import DataVersionRegistered
from shared.domain.retention.inventory import (
    BlobPath,
    DataKey,
    DataVersion,
    Deployment,
    DeploymentKey,
    ModelKey,
    ModelVersion,
)
from shared.domain.retrain import job_name_for
from shared.domain.rollout import deployment_name
from shared.domain.vocabulary import ApprovalState, Phase, Tag, metric_tag
from shared.domain.workspace import DataVersionSpec, DeploymentSpec
from tests.chaos.harness import EndState, Flow
from tests.chaos.platform import START, Platform

CONTAINER = "landing"
MODEL, ENDPOINT, METRIC = "churn-model", "churn-endpoint", "roc_auc"

FILE_DATASET = {"name": "reference", "container": CONTAINER, "prefix": "reference/", "type": "uri_file",
                "datastore": "landing"}
MARKER_DATASET = {"name": "churn", "container": CONTAINER, "prefix": "churn/", "type": "uri_folder",
                  "datastore": "landing", "batch": {"marker": "_SUCCESS", "quiet_period_seconds": 60}}
QUIET_DATASET = {"name": "clicks", "container": CONTAINER, "prefix": "clicks/", "type": "uri_folder",
                 "datastore": "landing", "batch": {"quiet_period_seconds": 60}}
RETRAINING = {"dataset": "churn", "pipeline": "ml/pipeline.yml", "experiment": "evergreen-churn",
              "model_name": MODEL, "inputs": {"metric": METRIC}}
PROMOTION: dict[str, Any] = {"name": MODEL, "promotion": {
    "metric": METRIC, "direction": "higher_is_better", "endpoint": ENDPOINT, "min_improvement": 0.01,
    "deployment": {"instance_type": "Standard_DS3_v2", "code": "ml/src", "scoring_script": "score.py"},
    "smoke_test": {"request": {"input_data": [{"tenure_months": 3}]}, "expect_keys": ["predictions"]},
    "canary_steps": [50, 100], "canary_interval_seconds": 60, "grace_period_seconds": 120,
    "poll_interval_seconds": 10}}
HOLDOUT_DATASET = {"name": "holdout", "container": CONTAINER, "prefix": "holdout/", "type": "uri_file",
                   "datastore": "landing"}
EVALUATION = {"data": "holdout@latest", "label_column": "churned", "slices": ["region"]}
RETENTION = {"rules": [
    {"name": "data", "type": "data_versions", "filters": {"names": ["churn"]},
     "actions": {"keep_latest": 1, "archive": {"days_after_creation_greater_than": 30}}},
    {"name": "models", "type": "model_versions", "filters": {"names": [MODEL]},
     "actions": {"keep_latest": 1, "archive": {"days_after_creation_greater_than": 30}}},
    {"name": "raw", "type": "blobs", "filters": {"prefixes": ["landing/churn/d"]},
     "actions": {"delete": {"days_after_modification_greater_than": 5}}},
    {"name": "stray", "type": "blobs", "filters": {"prefixes": ["landing/churn/stray/"]},
     "actions": {"tier_to_cool": {"days_after_modification_greater_than": 1}}},
]}


def policy(*, datasets: tuple[dict[str, Any], ...] = (MARKER_DATASET,), retraining: bool = False,
           promotion: bool = False, retention: bool = False, evaluation: bool = False,
           approval: bool = False) -> Policy:
    document: dict[str, Any] = {"datasets": list(datasets)}
    if retraining:
        document["retraining"] = [RETRAINING]
    if promotion:
        document["models"] = [PROMOTION]
    if approval:
        document["models"] = [{**PROMOTION, "promotion": {**PROMOTION["promotion"], "approval": "manual"}}]
    if evaluation:
        document["datasets"].append(HOLDOUT_DATASET)
        document["models"] = [{**PROMOTION, "promotion": {**PROMOTION["promotion"], "evaluation": EVALUATION}}]
    if retention:
        document["retention"] = RETENTION
    return parse_policy(document)


def _problems(*checks: tuple[bool, str]) -> list[str]:
    return [why for ok, why in checks if not ok]


# -- upload → data version -----------------------------------------------------------------------------
def one_file(platform: Platform) -> None:
    platform.at(0, "upload reference/regions.csv",
                lambda: platform.upload(CONTAINER, "reference/regions.csv", b"region,code\nnorth,1\nsouth,2\n"))


def expect_one_version(end: EndState) -> list[str]:
    versions = end.state["data versions"]
    return _problems((len(versions) == 1, f"one data version, not {versions}"),
                     (len(end.state["events published"]) == 1, "one DataVersionRegistered"))


def _uploading(platform: Platform, name: str, data: bytes) -> Callable[[], None]:
    return lambda: platform.upload(CONTAINER, name, data)


def marker_batch(platform: Platform) -> None:
    folder = "churn/2026-12-01/"
    for second, name, data in ((0, "part-0.csv", b"a,b\n1,2\n"), (5, "part-1.csv", b"a,b\n3,4\n"),
                               (10, "_SUCCESS", b"")):
        platform.at(second, f"upload {folder}{name}", _uploading(platform, f"{folder}{name}", data))


def quiet_batch(platform: Platform) -> None:
    folder = "clicks/2026-12-01/"
    for second, name in ((0, "part-0.csv"), (5, "part-1.csv"), (10, "part-2.csv")):
        platform.at(second, f"upload {folder}{name}", _uploading(platform, f"{folder}{name}", f"x\n{name}\n".encode()))


# -- data version → retraining -------------------------------------------------------------------------
def _version(version: str) -> DataVersionRegistered:
    return DataVersionRegistered(dataset="churn", asset_name="churn", version=version,
                                 uri=f"azureml://datastores/landing/paths/churn/drop-{version}/",
                                 asset_type="uri_folder", sha256=version * 64, file_count=2)


def retrain_submit(platform: Platform) -> None:
    platform.at(0, "DataVersionRegistered churn:1", lambda: platform.publish(_version("1")))


def expect_jobs(*versions: str) -> Any:
    def expect(end: EndState) -> list[str]:
        jobs = end.state["jobs"]
        wanted = sorted((job_name_for("churn", v), "Completed") for v in versions)
        return _problems((jobs == wanted, f"jobs {wanted}, not {jobs}"),
                         (len(end.state["models"]) == len(versions), f"{len(versions)} model(s) registered"))
    return expect


def run_with_follow_up(platform: Platform) -> None:
    platform.at(0, "DataVersionRegistered churn:1", lambda: platform.publish(_version("1")))
    # Half-way through the run of 1: Event Grid's first retries of either event (10 s, 30 s, 1 min, 5 min)
    # still deliver them in this order, so the fault-free order is what up to four faults leave too.
    platform.at(900, "DataVersionRegistered churn:2 while the run of 1 is active",
                lambda: platform.publish(_version("2")))


# -- model registered → rollout ------------------------------------------------------------------------
def _champion(platform: Platform) -> str:
    """Version 1 serves 100 % of the endpoint before the flow starts (set up outside the fault schedule)."""
    endpoints = platform.stores.endpoints
    version = platform.register_model(MODEL, {metric_tag(METRIC): "0.80"}, announce=False)
    name = deployment_name(MODEL, version)
    endpoints.begin_create_endpoint(ENDPOINT, {})
    endpoints.settle_all()
    endpoints.begin_create_deployment(DeploymentSpec(endpoint=ENDPOINT, name=name, model_name=MODEL,
                                                     model_version=version, instance_type="Standard_DS3_v2",
                                                     instance_count=1, environment=None, code_path=None,
                                                     scoring_script=None, tags={}))
    endpoints.settle_all()
    endpoints.begin_set_traffic(ENDPOINT, {name: 100})
    endpoints.settle_all()
    return name


def rollout(platform: Platform) -> None:
    _champion(platform)
    platform.at(0, "ModelRegistered churn-model:2 (better)",
                lambda: platform.register_model(MODEL, {metric_tag(METRIC): "0.90"}))


def expect_serving(version: str, phase: Phase) -> Any:
    def expect(end: EndState) -> list[str]:
        name = deployment_name(MODEL, version)
        traffic, deployments = end.state["endpoints"][ENDPOINT]
        rollouts = end.state["rollouts"]
        return _problems((traffic == ((name, 100),), f"all traffic on {name}, not {traffic}"),
                         ([d[0] for d in deployments] == [name], f"only {name} deployed, not {deployments}"),
                         ([r[1] for r in rollouts] == [phase.value], f"the rollout {phase.value}, not {rollouts}"))
    return expect


def rollback(platform: Platform) -> None:
    _champion(platform)
    platform.stores.endpoints.fail_provisioning(deployment_name(MODEL, "2"))
    platform.at(0, "ModelRegistered churn-model:2 (better, but its deployment fails provisioning)",
                lambda: platform.register_model(MODEL, {metric_tag(METRIC): "0.90"}))


def fair_gate(platform: Platform) -> None:
    """Version 1 serves; an evaluation drop exists; version 2 is registered: compared, then rolled out."""
    _champion(platform)
    platform.stores.workspace.register_data_version(DataVersionSpec(
        name="holdout", uri="azureml://datastores/landing/paths/holdout/1.csv", asset_type="uri_file",
        description="", tags={}))
    platform.at(0, "ModelRegistered churn-model:2 (compared with 1 on the holdout)",
                lambda: platform.register_model(MODEL, {metric_tag(METRIC): "0.10"}))  # its own holdout is ignored


def waited_for_evaluation(platform: Platform) -> None:
    """Version 1 serves; version 2 registers before any evaluation drop (skipped, waiting); ten minutes later
    holdout:1 is registered: its DataVersionRegistered gates version 2 (compared with 1, then rolled out)."""
    _champion(platform)
    platform.at(0, "ModelRegistered churn-model:2 (no evaluation data yet: it waits)",
                lambda: platform.register_model(MODEL, {metric_tag(METRIC): "0.10"}))

    def land() -> None:
        holdout = platform.stores.workspace.register_data_version(DataVersionSpec(
            name="holdout", uri="azureml://datastores/landing/paths/holdout/1.csv", asset_type="uri_file",
            description="", tags={Tag.SHA256.value: "h" * 64}))
        platform.publish(DataVersionRegistered(dataset="holdout", asset_name="holdout", version=holdout.version,
                                               uri=holdout.uri, asset_type="uri_file", sha256="h" * 64,
                                               file_count=1))
    platform.at(600, "DataVersionRegistered holdout:1 (the evaluation data lands)", land)


def expect_compared_and_serving(end: EndState) -> list[str]:
    compared = [key for key in end.effects if key.startswith("job submitted: evergreen-compare-")]
    serving: list[str] = expect_serving("2", Phase.SUCCEEDED)(end)
    return serving + _problems(
        (len(compared) == 1, f"one comparison job, not {compared}"))


# -- manual approval: the gate passes, the candidate waits, a person decides -----------------------------
OPERATOR = "ops@example.com"


def _decided(verdict: ApprovalState) -> Any:
    def script(platform: Platform) -> None:
        """Version 1 serves; version 2 passes the gate and waits; ten minutes later a person decides."""
        _champion(platform)
        platform.at(0, "ModelRegistered churn-model:2 (better; approval: manual)",
                    lambda: platform.register_model(MODEL, {metric_tag(METRIC): "0.90"}))
        platform.operator(600, f"python -m shared.cli {verdict.value} {MODEL}:2", lambda: (
            platform.services.approvals and platform.services.approvals.decide(
                MODEL, "2", verdict, by=OPERATOR, reason="reviewed", event_id=f"cli-{verdict.value}")))
    return script


def expect_decided(verdict: ApprovalState) -> Any:
    def expect(end: EndState) -> list[str]:
        approvals = [state for _, state in end.state["approvals"]]
        if verdict is ApprovalState.APPROVED:
            return expect_serving("2", Phase.SUCCEEDED)(end) + _problems(
                (approvals == [verdict.value], f"the approval {verdict.value}, not {approvals}"))
        traffic, deployments = end.state["endpoints"][ENDPOINT]
        kept = deployment_name(MODEL, "1")
        return _problems((traffic == ((kept, 100),), f"all traffic still on {kept}, not {traffic}"),
                         ([d[0] for d in deployments] == [kept], f"only {kept} deployed, not {deployments}"),
                         (end.state["rollouts"] == [], f"no rollout, not {end.state['rollouts']}"),
                         (approvals == [verdict.value], f"the approval {verdict.value}, not {approvals}"))
    return expect


# -- champion re-score: new evaluation data, the champion decayed, retrained once -----------------------
def rescore(platform: Platform) -> None:
    """Version 1 serves (0.80 at promotion); the newest training data is churn:1; holdout:1 arrives and the
    champion scores 0.70 on it: ChampionDegraded, and churn:1 is retrained (a rerun keyed by the decay)."""
    _champion(platform)
    platform.rescored = 0.70
    ws = platform.stores.workspace
    ws.register_data_version(DataVersionSpec(name="churn", uri="azureml://datastores/landing/paths/churn/d1/",
                                             asset_type="uri_folder", description="",
                                             tags={Tag.SHA256.value: "c" * 64}))
    holdout = ws.register_data_version(DataVersionSpec(
        name="holdout", uri="azureml://datastores/landing/paths/holdout/1.csv", asset_type="uri_file",
        description="", tags={Tag.SHA256.value: "h" * 64}))
    platform.at(0, "DataVersionRegistered holdout:1 (evaluation data)", lambda: platform.publish(DataVersionRegistered(
        dataset="holdout", asset_name="holdout", version=holdout.version, uri=holdout.uri, asset_type="uri_file",
        sha256="h" * 64, file_count=1)))


def expect_rescored(end: EndState) -> list[str]:
    """One degraded score, one ChampionDegraded, churn:1 retrained under the decay's rerun key, and its model
    then rolled out as any candidate (compared with the champion on the holdout)."""
    scores, degraded = end.state["champion scores"], end.state["champion degraded"]
    rerun = job_name_for("churn", "1", degradation_trigger(f"{MODEL}:1", "holdout", "1"))
    retrained = [job for job, _ in end.state["jobs"] if job.startswith("evergreen-churn-")]
    return expect_serving("2", Phase.SUCCEEDED)(end) + _problems(
        (len(scores) == 1 and scores[0][1:] == (f"{MODEL}:1", "0.7", True), f"one degraded re-score, not {scores}"),
        (len(degraded) == 1, f"one ChampionDegraded, not {degraded}"),
        (retrained == [rerun], f"churn:1 retrained once as {rerun}, not {retrained}"))


# -- retention -----------------------------------------------------------------------------------------
def retention(platform: Platform) -> None:
    """Old data and model versions to archive, raw blobs to delete, a stray blob to tier; one deployment serving."""
    def ago(days: float) -> Any:
        return START - timedelta(days=days)

    ws, blobs = platform.stores.retention_workspace, platform.stores.retention_blobs
    ws.put(*(DataVersion("churn", v, ago(d), blob_paths=(BlobPath("landing", f"churn/d{v}/"),))
             for v, d in RETENTION_DATA))
    ws.put(*(ModelVersion(MODEL, v, ago(d), metrics={METRIC: auc},
                          blob_paths=(BlobPath("azureml-blobstore", f"models/{v}/"),))
             for v, d, auc in RETENTION_MODELS))
    ws.put(Deployment(ENDPOINT, "blue", traffic_percent=100, model_name=MODEL, model_version="4"))
    for name in RETENTION_BLOBS:
        blobs.put(CONTAINER, name, last_modified=ago(30))


RETENTION_DATA = (("1", 200), ("2", 150), ("3", 100), ("4", 5))
RETENTION_MODELS = (("1", 100, 0.91), ("2", 90, 0.70), ("3", 80, 0.60), ("4", 1, 0.50))
RETENTION_BLOBS = ("churn/d1/part-0.csv", "churn/d2/part-0.csv", "churn/d2/part-1.csv", "churn/stray/notes.csv")


def retention_assets(platform: Platform) -> dict[str, Any]:
    """What retention may have changed: each version's archived flag, the deployment, each blob's tier."""
    ws, blobs = platform.stores.retention_workspace, platform.stores.retention_blobs
    data = {v: ws.data_version(DataKey("churn", v)) for v, _ in RETENTION_DATA}
    models = {v: ws.model_version(ModelKey(MODEL, v)) for v, _, _ in RETENTION_MODELS}
    found = {name: blobs.blob(CONTAINER, name) for name in RETENTION_BLOBS}
    return {"retention": {
        "data": sorted((v, d.archived if d else "deleted") for v, d in data.items()),
        "models": sorted((v, m.archived if m else "deleted") for v, m in models.items()),
        "deployment": ws.deployment(DeploymentKey(ENDPOINT, "blue")) is not None,
        "blobs": sorted((name, str(b.tier) if b else "deleted") for name, b in found.items()),
    }}


def expect_retired(end: EndState) -> list[str]:
    done = [key for key in end.effects if key.startswith("retention ")]
    kinds = {key.split(":")[0] for key in done}
    return _problems((len(done) >= 4, f"several retention actions done, not {done}"),
                     (len(kinds) >= 3, f"archives, deletes and a tiering, not {sorted(kinds)}"))


FLOWS: tuple[Flow, ...] = (
    Flow("one-file-upload", policy(datasets=(FILE_DATASET,)), one_file, expect_one_version),
    Flow("batch-sealed-by-marker", policy(), marker_batch, expect_one_version),
    Flow("batch-sealed-by-quiet-period", policy(datasets=(QUIET_DATASET,)), quiet_batch, expect_one_version),
    Flow("retrain-submit", policy(retraining=True), retrain_submit, expect_jobs("1")),
    Flow("run-completed-with-follow-up", policy(retraining=True), run_with_follow_up, expect_jobs("1", "2")),
    Flow("model-registered-to-100-percent", policy(promotion=True), rollout, expect_serving("2", Phase.SUCCEEDED)),
    Flow("rollback", policy(promotion=True), rollback, expect_serving("1", Phase.ROLLED_BACK)),
    Flow("model-registered-compared-then-rolled-out", policy(evaluation=True), fair_gate,
         expect_compared_and_serving),
    Flow("model-gated-when-evaluation-data-lands", policy(evaluation=True), waited_for_evaluation,
         expect_compared_and_serving),
    Flow("retention-apply", policy(retention=True), retention, expect_retired, retention=True,
         observe=retention_assets),
    Flow("manual-approval-approved", policy(approval=True), _decided(ApprovalState.APPROVED),
         expect_decided(ApprovalState.APPROVED)),
    Flow("manual-approval-rejected", policy(approval=True), _decided(ApprovalState.REJECTED),
         expect_decided(ApprovalState.REJECTED)),
    Flow("champion-rescored-degraded-retrained", policy(retraining=True, evaluation=True), rescore,
         expect_rescored),
)

QUEUED_FLOWS = frozenset({  # flows whose work rides on queue messages (the blob trigger's, seals, rollout steps)
    "one-file-upload", "batch-sealed-by-marker", "batch-sealed-by-quiet-period", "model-registered-to-100-percent",
    "rollback", "model-registered-compared-then-rolled-out", "manual-approval-approved",
    "champion-rescored-degraded-retrained"})
