"""Durable DAG workflows, transport-agnostic: specs, validation, store, artifacts, runner.

    from mesh.workflow import load_spec, validate, WorkflowRunner, open_store
"""

from mesh.workflow.artifacts import ArtifactError, ArtifactRef, ArtifactStore
from mesh.workflow.codec import OutputError, decode_output, encode_output
from mesh.workflow.events import Event, EventKind
from mesh.workflow.execution import CURRENT_RUN, CallStep, StepResult, backoff_delay
from mesh.workflow.model import (
    LeaseHeld,
    LeaseLost,
    PipelineSpec,
    RunConflict,
    RunNotFound,
    RunState,
    StageSpec,
    StepSpec,
    StepState,
    WorkflowSpec,
    WorkflowSpecError,
)
from mesh.workflow.owner import (
    LEASE_GRACE,
    LEASE_SECONDS,
    owner_alive,
    owner_gone,
    process_owner,
)
from mesh.workflow.progress import ProgressDisplay, render_table
from mesh.workflow.runner import WorkflowRunner
from mesh.workflow.spec import load_document, load_pipeline, load_spec, parse_rate
from mesh.workflow.steps import STEP_TIMED_OUT, cancelled_by_timeout
from mesh.workflow.store import RunRecord, StepRecord, Store, open_store
from mesh.workflow.validate import validate

__all__ = [
    # specs
    "load_spec", "load_pipeline", "load_document", "parse_rate", "validate",
    "WorkflowSpec", "StepSpec", "PipelineSpec", "StageSpec", "WorkflowSpecError",
    # running
    "WorkflowRunner", "StepResult", "CallStep", "CURRENT_RUN", "backoff_delay",
    "STEP_TIMED_OUT", "cancelled_by_timeout",
    "Event", "EventKind", "ProgressDisplay", "render_table",
    # state
    "open_store", "Store", "RunRecord", "StepRecord", "RunState", "StepState", "RunNotFound",
    "RunConflict", "owner_alive", "process_owner",
    "LeaseHeld", "LeaseLost", "LEASE_SECONDS", "LEASE_GRACE", "owner_gone",
    # outputs
    "ArtifactStore", "ArtifactRef", "ArtifactError", "encode_output", "decode_output",
    "OutputError",
]
