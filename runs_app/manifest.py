"""Plan documents: the one shape of a stage and of a stored plan, a revision resolved into
its manifest, the run digest, and diffs between manifests.

`stage_document` is the one normaliser of a stage: the editor, the services (what a revision
stores, `plan_document`) and the engine (what an executor sees, `run_stage_document`) all
shape a stage through it.

The manifest is what partitioners make of a revision right now: partitions with inputs and
content fingerprints. The digest covers the revision, the kinds' versions and the manifest, so
an approval bound to it stops covering the plan as soon as anything it read has changed.

Each partition gets its content id here (runs_app.hashing.content_id) from the stage's params
as they decide the effect (`effect_params`: defaults filled, workspaces and targets by
identity), and the stage manifest pins those identities (`identities`), so the digest, and
with it an approval, covers where the stage acts and not only the names it uses.

A revision resolves under the kind versions it pins (`PlanRevision.kind_versions`, see
blueprints_app.versions): publishing a newer version does not change what an older revision
means, but a safety policy tightened since is part of the digest, so it does make an approval
given under the looser policy stale.
"""

from __future__ import annotations

import copy
import dataclasses
import graphlib
import hashlib
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from blueprints_app.models import JobKind
from blueprints_app.registry import (
    PARTITIONERS,
    UNPINNED_DATA,
    ComponentError,
    PartitionContext,
    PartitionSpec,
    get_partitioner,
)
from blueprints_app.validation import python_values, schema_validator
from blueprints_app.versions import kinds_at, safety_policy
from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import hashing
from runs_app.models import Partition, PlanRevision, Run, RunStage
from runs_app.targets import get_target
from runs_app.workspaces import get_workspace

MAX_DIFF_ITEMS = 50
IDENTITIES = "identities"  # manifest key: each workspace/target param → {name, identity}


# --- The stage document ------------------------------------------------------------------

# A stage's fields in the order they are stored: the four names every stage has, its params
# and dependencies, then the settings a stage may leave unset (the kind's default applies).
STAGE_NAMES = ("id", "kind", "partitioner", "executor")
STAGE_SETTINGS = ("slo_ms", "non_idempotent", "max_failed_partitions")


def stage_document(stage: Mapping[str, Any], *, keep_null: bool = False) -> dict[str, Any]:
    """The one shape of a stage document, for the editor, the services and the engine.

    In: a mapping with any of a stage's fields (a validated plan's stage, a stage decoded
    from the editor's form, a run's pinned row). Out: a new dict, keys in this order:
    `id`, `kind`, `partitioner`, `executor` (`""` when missing), `params` (`{}` when missing
    or empty), `depends_on` (a copy of the list, `[]` when missing or empty), then each of
    `slo_ms`, `non_idempotent`, `max_failed_partitions` that is set. Other keys are dropped.

    A setting given as null is unset (the validator reads it so) and is dropped, unless
    `keep_null`: the editor keeps what the author wrote until it is validated, so a null the
    validator refuses (`non_idempotent`) is reported at its field. A value of the wrong type
    (a `depends_on` that is not a list) is kept as it is, for the validator to report.
    Nothing here raises; the values are not copied (`params` is the caller's dict).
    """
    out: dict[str, Any] = {name: stage.get(name, "") for name in STAGE_NAMES}
    out["params"] = stage.get("params") or {}
    depends_on = stage.get("depends_on") or []
    out["depends_on"] = list(depends_on) if isinstance(depends_on, list) else depends_on
    for name in STAGE_SETTINGS:
        if name in stage and (keep_null or stage[name] is not None):
            out[name] = stage[name]
    return out


def plan_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a valid plan document (`PlanRevision.document`; its digest is the
    revision's): `{"name": str (stripped), "description": str ("" when missing), "stages":
    [stage_document(s) for each stage]}`, with every integral float made an int
    (`python_values`: what a run reads is what the schema promised). The caller validates
    first: a missing `name` or `stages` raises KeyError.
    """
    document = python_values(document)
    return {
        "name": document["name"].strip(),
        "description": document.get("description", ""),
        "stages": [stage_document(stage) for stage in document["stages"]],
    }


def run_stage_document(stage: RunStage) -> dict[str, Any]:
    """The stage as its executor sees it (`ExecutionContext.stage`), from the run's pinned row:
    `stage_document` of the row's fields, with `non_idempotent` always given (the row's: true
    for a non-idempotent executor too). The row's `slo_ms` and `max_failed_partitions` are
    the engine's to enforce, not the executor's, so they are left out.
    """
    return stage_document(
        {
            "id": stage.stage_id,
            "kind": stage.kind,
            "partitioner": stage.partitioner,
            "executor": stage.executor,
            "params": stage.params,
            "depends_on": stage.depends_on,
            "non_idempotent": stage.non_idempotent,
        }
    )


# --- Resolving a revision ------------------------------------------------------------------


@dataclasses.dataclass
class ResolvedStage:
    position: int
    stage: dict[str, Any]
    kind: JobKind
    specs: list[PartitionSpec]
    data: dict[str, Any]
    content_ids: list[str]
    content_root: str
    # False for a stage compared without running its partitioner (no specs, data only
    # the identities): `stale_without_partitioning`.
    partitioned: bool = True

    @property
    def stage_id(self) -> str:
        return self.stage["id"]


@dataclasses.dataclass
class ResolvedManifest:
    revision: PlanRevision
    stages: list[ResolvedStage]  # in plan order
    kind_versions: dict[str, int]
    digest: str

    @property
    def partition_count(self) -> int:
        return sum(len(s.specs) for s in self.stages)


def topological_order(stages: list[dict[str, Any]]) -> list[int]:
    """Stage positions so that every stage comes after what it depends on (plan is valid).

    graphlib keeps the count of what each stage still waits for; the order among stages
    ready together is the plan's: sweeps in plan order, each taking every stage whose
    dependencies are done by then (so a stage right after its dependency follows it in the
    same sweep). Raises ServiceError (dependency_cycle) when there is a cycle.
    """
    by_id = {s["id"]: i for i, s in enumerate(stages)}
    sorter = graphlib.TopologicalSorter(
        {i: [by_id[d] for d in s.get("depends_on", [])] for i, s in enumerate(stages)}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError:
        raise ServiceError("the plan has a dependency cycle", code=codes.DEPENDENCY_CYCLE) from None
    ready = set(sorter.get_ready())
    order: list[int] = []
    while sorter.is_active():
        for i in range(len(stages)):
            if i in ready:
                ready.discard(i)
                order.append(i)
                sorter.done(i)
                ready.update(sorter.get_ready())
    return order


# The params widgets that name a registered place (blueprints_app schemas mark them): in a
# content id each becomes {"name", "identity"}, so re-pointing a name in settings changes the id.
_PLACES = {
    "workspace": lambda name, path: get_workspace(name, path=path).identity,
    "target": lambda name, path: get_target(name, path=path).identity,
}


def effect_params(
    stage: dict[str, Any], places: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """The stage's params as they decide its effect: what a content id covers.

    The partitioner's params schema fills in every default (recursively, inside objects and
    arrays too, so `{"backfill": {...}}` and the same with its default `batch_size` written
    out are one thing), and every value the schema marks as a workspace or a database target
    (`"x-hxo-widget": "workspace" | "target"`) becomes `{"name": ..., "identity": ...}`: the
    real path of the workspace, the target's database (runs_app.targets.Target.identity). The
    name stays in as well, because effects are keyed on it (index rows and archive folders
    are per workspace name). A param the schema marks `"x-hxo-no-effect": true` decides only
    when the work runs, never what it does (deploy.migrate's `health` checks), and is left
    out. Raises ComponentError when a named place is not registered.
    `places`, when given, receives each place found by its path (`params.target` → {...}).
    """
    partitioner = PARTITIONERS.get(stage.get("partitioner", ""))
    schema = partitioner.get_params_schema() if partitioner is not None else {}
    found = places if places is not None else {}
    return _resolved(schema, stage.get("params") or {}, "params", found)


def _resolved(schema: Any, value: Any, path: str, places: dict[str, dict[str, str]]) -> Any:
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        out = {
            k: _resolved(props.get(k), v, f"{path}.{k}", places)
            for k, v in value.items()
            if not (isinstance(props.get(k), dict) and props[k].get("x-hxo-no-effect"))
        }
        for name, prop in props.items():
            if prop.get("x-hxo-no-effect") if isinstance(prop, dict) else False:
                continue
            if name not in out and isinstance(prop, dict) and "default" in prop:
                default = copy.deepcopy(prop["default"])
                out[name] = _resolved(prop, default, f"{path}.{name}", places)
        return out
    if isinstance(value, list):
        items = schema.get("items")
        return [_resolved(items, v, f"{path}[{i}]", places) for i, v in enumerate(value)]
    place = _PLACES.get(schema.get("x-hxo-widget", ""))
    if place is not None and isinstance(value, str):
        places[path] = {"name": value, "identity": place(value, path)}
        return dict(places[path])
    return value


def pinned_data(data: dict[str, Any] | None) -> dict[str, Any]:
    """A stage manifest's data as the digest and diffs see it: without UNPINNED_DATA."""
    data = data or {}
    if UNPINNED_DATA.isdisjoint(data):
        return data
    return {k: v for k, v in data.items() if k not in UNPINNED_DATA}


def _stage_digest_lines(stage_id: str, data: dict[str, Any], specs: list[PartitionSpec]) -> bytes:
    h = hashlib.sha256()
    h.update(hashing.canonical_json([stage_id, pinned_data(data)]).encode())
    for i, spec in enumerate(specs):
        h.update(hashing.canonical_json([i, spec.wave, spec.inputs, spec.fingerprints]).encode())
    return h.digest()


def resolve_manifest(
    revision: PlanRevision, kinds: dict[str, JobKind] | None = None
) -> ResolvedManifest:
    """Run every stage's partitioner; refuse with a clear code and path on any problem.

    `kinds` defaults to the registry at the versions the revision pins."""
    kinds = kinds if kinds is not None else kinds_at(revision.kind_versions)
    stages = revision.stages
    resolved: dict[int, ResolvedStage] = {}
    total = 0
    limit = settings.HXO_MAX_PARTITIONS
    for position in topological_order(stages):
        stage = stages[position]
        path = f"stages[{position}]"
        kind = kinds.get(stage["kind"])
        if kind is None:
            raise ServiceError(
                f"{stage['kind']!r} is not a registered job kind",
                code=codes.UNKNOWN_KIND,
                errors=[{"path": f"{path}.kind", "code": codes.UNKNOWN_KIND, "message": "unknown"}],
            )
        try:
            manifest = get_partitioner(stage["partitioner"]).partition(
                PartitionContext(stage=stage, kind=kind)
            )
        except ComponentError as exc:
            sub = f"{path}.{exc.path}" if exc.path else path
            raise ServiceError(
                f"stage {stage['id']!r} could not be partitioned: {exc.message}",
                code=codes.PARTITIONING_FAILED,
                errors=[{"path": sub, "code": exc.code, "message": exc.message}],
            ) from exc
        total += len(manifest.partitions)
        if total > limit:
            raise ServiceError(
                f"the plan resolves to more than {limit} partitions (HXO_MAX_PARTITIONS)",
                code=codes.TOO_MANY_PARTITIONS,
                errors=[
                    {
                        "path": path,
                        "code": codes.TOO_MANY_PARTITIONS,
                        "message": f"{len(manifest.partitions)} partitions in this stage",
                    }
                ],
            )
        validator = schema_validator(kind.input_schema)
        for i, spec in enumerate(manifest.partitions):
            err = next(iter(validator.iter_errors(spec.inputs)), None)
            if err is not None:
                raise ServiceError(
                    f"partition {i} of stage {stage['id']!r} has inputs that do not match "
                    f"the input schema of {kind.kind}: {err.message}",
                    code=codes.INVALID_INPUTS,
                    errors=[
                        {
                            "path": f"{path}.partitions[{i}].inputs",
                            "code": codes.INVALID_INPUTS,
                            "message": err.message,
                        }
                    ],
                )
        places: dict[str, dict[str, str]] = {}
        try:
            params = effect_params(stage, places)
        except ComponentError as exc:  # a workspace or target unregistered since
            raise ServiceError(
                f"stage {stage['id']!r} could not be partitioned: {exc.message}",
                code=codes.PARTITIONING_FAILED,
                errors=[{"path": f"{path}.{exc.path}", "code": exc.code, "message": exc.message}],
            ) from exc
        # A partition depends on every partition of the stages it depends on (their content roots)
        # and on the earlier waves of its own stage.
        dep_roots = [
            resolved[_position(stages, d)].content_root for d in stage.get("depends_on", [])
        ]
        by_wave: dict[int, list[int]] = {}
        for i, spec in enumerate(manifest.partitions):
            by_wave.setdefault(spec.wave, []).append(i)
        content_ids: list[str] = [""] * len(manifest.partitions)
        earlier: list[str] = []
        for wave in sorted(by_wave):
            wave_deps = [*dep_roots, hashing.content_root(earlier)] if earlier else dep_roots
            for i in by_wave[wave]:
                spec = manifest.partitions[i]
                content_ids[i] = hashing.content_id(
                    kind=kind.kind,
                    kind_version=kind.version,
                    executor=stage["executor"],
                    partitioner=stage["partitioner"],
                    params=params,
                    inputs=spec.inputs,
                    fingerprints=spec.fingerprints,
                    depends_on=wave_deps,
                )
            earlier.extend(content_ids[i] for i in by_wave[wave])
        data = manifest.data
        if places:
            # Pinned with the manifest, so the run digest covers where the stage acts: an
            # approval of a dry-run against one database never covers an apply on another
            # that a target name was re-pointed to (the diff names it: `identities`).
            data = {**data, IDENTITIES: places}
        resolved[position] = ResolvedStage(
            position=position,
            stage=stage,
            kind=kind,
            specs=manifest.partitions,
            data=data,
            content_ids=content_ids,
            content_root=hashing.content_root(content_ids),
        )

    ordered = [resolved[i] for i in range(len(stages))]
    kind_versions = {rs.kind.kind: rs.kind.version for rs in ordered}
    # Only when a pin's policy was tightened, so that every other digest stays as it was.
    tightened = {rs.kind.kind: safety_policy(rs.kind) for rs in ordered if rs.kind.safety_tightened}
    h = hashlib.sha256()
    head: list[Any] = [revision.digest, kind_versions, *([tightened] if tightened else [])]
    h.update(hashing.canonical_json(head).encode())
    for rs in ordered:
        h.update(_stage_digest_lines(rs.stage_id, rs.data, rs.specs))
    return ResolvedManifest(
        revision=revision, stages=ordered, kind_versions=kind_versions, digest=h.hexdigest()
    )


def _position(stages: list[dict[str, Any]], stage_id: str) -> int:
    return next(i for i, s in enumerate(stages) if s["id"] == stage_id)


def _fingerprint_diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    return {
        "added": sorted(set(new) - set(old))[:MAX_DIFF_ITEMS],
        "removed": sorted(set(old) - set(new))[:MAX_DIFF_ITEMS],
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k])[:MAX_DIFF_ITEMS],
    }


def stale_without_partitioning(
    run: Run, revision: PlanRevision, kinds: dict[str, JobKind]
) -> dict[str, Any] | None:
    """The diff between a dry-run and a revision as far as it is known without running any
    partitioner, or None when nothing differs that far (the partitions may still differ).

    Everything compared here enters the run digest, so a non-None answer means the digests
    differ: the plan document (the revision's digest; then the stages' kind, partitioner,
    executor, params, position, added and removed stages), the kinds' versions, a safety
    policy changed since the dry-run, and where each stage acts (workspaces and targets by
    identity: `identities`). A workspace or target that is no longer registered is left to
    the partitioning, which fails the run with its error. Cost: a few queries, no file read.
    """
    stages: list[ResolvedStage] = []
    for position, stage in enumerate(revision.stages):
        kind = kinds.get(stage["kind"])
        if kind is None:
            return None  # refused by the validation before this is asked
        places: dict[str, dict[str, str]] = {}
        try:
            effect_params(stage, places)
        except ComponentError:
            return None
        stages.append(
            ResolvedStage(
                position=position,
                stage=stage,
                kind=kind,
                specs=[],
                data={IDENTITIES: places} if places else {},
                content_ids=[],
                content_root="",
                partitioned=False,
            )
        )
    head = ResolvedManifest(
        revision=revision,
        stages=stages,
        kind_versions={rs.kind.kind: rs.kind.version for rs in stages},
        digest="",
    )
    diff = diff_against_run(run, head)
    if run.revision.digest == revision.digest:
        diff.pop("revision", None)  # the same document saved again: not a change
    return diff if any(diff.values()) else None


def diff_against_run(run: Run, resolved: ResolvedManifest) -> dict[str, Any]:
    """What differs between a stored run's manifest and a freshly resolved one.

    Out: `{"stages": [{"id", "change": "added"|"removed"|"changed", ...}], "revision"?,
    "kind_versions"?, "policy"?, "digest"?}`. Stages of `resolved` that were not partitioned
    (`ResolvedStage.partitioned` False: `stale_without_partitioning`) are compared by their
    fields, params and identities only."""
    diff: dict[str, Any] = {"stages": []}
    if run.revision_id != resolved.revision.pk:
        diff["revision"] = {"from": run.revision.number, "to": resolved.revision.number}
    old_versions = {k: v["version"] for k, v in run.kind_snapshots.items()}
    changed_versions = {
        k: {"from": old_versions.get(k), "to": v}
        for k, v in resolved.kind_versions.items()
        if old_versions.get(k) != v
    }
    if changed_versions:
        diff["kind_versions"] = changed_versions
    policy = _policy_diff(run.kind_snapshots, resolved)
    if policy:
        diff["policy"] = policy
    old_stages = {s.stage_id: s for s in run.run_stages.all()}
    new_stages = {rs.stage_id: rs for rs in resolved.stages}
    for sid in sorted(set(old_stages) - set(new_stages)):
        diff["stages"].append({"id": sid, "change": "removed"})
    for sid in sorted(set(new_stages) - set(old_stages)):
        diff["stages"].append({"id": sid, "change": "added"})
    for sid in sorted(set(old_stages) & set(new_stages)):
        old_stage, new = old_stages[sid], new_stages[sid]
        entry = _stage_diff(old_stage, new)
        if old_stage.position != new.position:
            entry["position"] = {"from": old_stage.position, "to": new.position}
        if entry:
            diff["stages"].append({"id": sid, "change": "changed", **entry})
    if resolved.digest and run.digest != resolved.digest and not any(diff.values()):
        # Never an empty diff for a stale digest: say at least that the manifest differs.
        diff["digest"] = {"from": run.digest, "to": resolved.digest}
    return diff


# The safety policy of a kind, as the digest covers it (blueprints_app.versions.safety_policy).
POLICY_FIELDS = ("allow_non_idempotent", "require_dry_run", "required_approvals")


def _policy_diff(snapshots: dict[str, Any], resolved: ResolvedManifest) -> dict[str, Any]:
    """kind → field → {"from", "to"} for every safety policy field that differs between the
    run's kind snapshots and the kinds the plan resolves under now (a policy tightened since
    the dry-run changes the digest without changing the kind's version)."""
    out: dict[str, Any] = {}
    for rs in resolved.stages:
        snap = snapshots.get(rs.kind.kind)
        if snap is None or rs.kind.kind in out:
            continue
        fields = {
            field: {"from": snap.get(field), "to": getattr(rs.kind, field)}
            for field in POLICY_FIELDS
            if snap.get(field) != getattr(rs.kind, field)
        }
        if fields:
            out[rs.kind.kind] = fields
    return out


def _stage_diff(old_stage: RunStage, new: ResolvedStage) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for field in ("kind", "partitioner", "executor"):
        if getattr(old_stage, field) != new.stage[field]:
            entry[field] = {"from": getattr(old_stage, field), "to": new.stage[field]}
    if old_stage.params != (new.stage.get("params") or {}):
        entry["params"] = {"from": old_stage.params, "to": new.stage.get("params") or {}}
    if new.partitioned and pinned_data(old_stage.manifest) != pinned_data(new.data):
        entry["manifest_changed"] = True
    old_places = (old_stage.manifest or {}).get(IDENTITIES, {})
    new_places = new.data.get(IDENTITIES, {})
    if old_places != new_places:
        entry[IDENTITIES] = {"from": old_places, "to": new_places}
    if not new.partitioned:
        return entry
    old_parts = list(
        Partition.objects.filter(stage=old_stage)
        .order_by("index")
        .values_list("index", "inputs", "fingerprints", "wave")
    )
    if len(old_parts) != len(new.specs):
        entry["partitions"] = {"from": len(old_parts), "to": len(new.specs)}
    changed = []
    for index, inputs, fingerprints, wave in old_parts:
        if index >= len(new.specs):
            continue
        spec = new.specs[index]
        item: dict[str, Any] = {}
        if inputs != spec.inputs:
            item["inputs"] = {"from": inputs, "to": spec.inputs}
        if fingerprints != spec.fingerprints:
            item["fingerprints"] = _fingerprint_diff(fingerprints, spec.fingerprints)
        if wave != spec.wave:
            item["wave"] = {"from": wave, "to": spec.wave}
        if item:
            changed.append({"index": index, **item})
            if len(changed) >= MAX_DIFF_ITEMS:
                break
    if changed:
        entry["changed_partitions"] = changed
    return entry
