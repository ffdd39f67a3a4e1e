"""Retention: which old data versions, models, blobs, idle deployments and job outputs to retire.

Pure (no I/O), in four small modules:

- `inventory`: typed keys of every asset kind and the `Inventory` snapshot adapters list;
- `addresses`: reading Azure ML data paths (every datastore kind and URI form) into blob paths,
  failing closed on what it cannot read;
- `protection`: what is never touched and why (deployed, champions and their lineage, unfinished
  jobs, in-flight rollouts, candidates awaiting approval, both sides of comparisons not yet decided,
  candidates waiting for their evaluation data, the protection tag) and which blobs versions still reference;
- `planner`: the plan types and `plan_retention`, inventory + rules -> `RetentionPlan`;
- `render`: the dry run's table.

The `retention:` policy schema lives in `shared.config.retention`; the service that lists, plans
and applies is `shared.services.retention`. This package re-exports the public names of all of them
(schema included), so `from shared.domain.retention import ...` keeps working.
"""

from shared.config.retention import (
    DEFAULT_PROTECT_TAG,
    EXAMPLE_YAML,
    AfterCreation,
    AfterModification,
    DeleteCondition,
    DeleteIdle,
    KeepTopK,
    RetentionPolicy,
    RetentionRule,
    RuleActions,
    RuleFilters,
    RuleType,
    parse_retention,
)
from shared.domain.retention.addresses import AddressBook, Datastore, read_job_input
from shared.domain.retention.inventory import (
    TIER_RANK,
    Approval,
    AssetKey,
    AssetLabel,
    Blob,
    BlobKey,
    BlobPath,
    BlobTier,
    DataKey,
    DataVersion,
    Deployment,
    DeploymentKey,
    Inventory,
    Job,
    JobInput,
    JobOutputKey,
    Location,
    ModelKey,
    ModelVersion,
    OpenComparison,
    Rollout,
    Unreadable,
    WaitingForData,
)
from shared.domain.retention.planner import Action, ActionKind, Protected, RetentionPlan, Suspended, plan_retention
from shared.domain.retention.protection import champions, protected_assets
from shared.domain.retention.render import render_plan_table

__all__ = [
    "DEFAULT_PROTECT_TAG",
    "EXAMPLE_YAML",
    "TIER_RANK",
    "Action",
    "ActionKind",
    "AddressBook",
    "AfterCreation",
    "AfterModification",
    "Approval",
    "AssetKey",
    "AssetLabel",
    "Blob",
    "BlobKey",
    "BlobPath",
    "BlobTier",
    "DataKey",
    "DataVersion",
    "Datastore",
    "DeleteCondition",
    "DeleteIdle",
    "Deployment",
    "DeploymentKey",
    "Inventory",
    "Job",
    "JobInput",
    "JobOutputKey",
    "KeepTopK",
    "Location",
    "ModelKey",
    "ModelVersion",
    "OpenComparison",
    "Protected",
    "RetentionPlan",
    "RetentionPolicy",
    "RetentionRule",
    "Rollout",
    "RuleActions",
    "RuleFilters",
    "RuleType",
    "Suspended",
    "Unreadable",
    "WaitingForData",
    "champions",
    "parse_retention",
    "plan_retention",
    "protected_assets",
    "read_job_input",
    "render_plan_table",
]
