"""Check a workflow spec before anything runs, collecting every problem at once.

One pass over the raw mapping checks types and keys, a second over the dependency graph
checks self-dependencies, unknown dependencies and cycles (with the cycle's path), and an
optional catalog ``{agent: actions}`` catches names no agent serves. Only a spec with no
problem at all becomes a :class:`WorkflowSpec`; otherwise :class:`WorkflowSpecError` lists
them all and nothing is built.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
from collections.abc import Collection, Mapping
from typing import Any, Final

from mesh.workflow.model import StepSpec, WorkflowSpec, WorkflowSpecError

STEP_KEYS: Final = ("agent", "action", "depends_on", "timeout", "retries", "backoff", "params")
WRAPPER_KEYS: Final = ("name", "description", "version", "steps")
MAX_STEPS: Final = 1000
MAX_RETRIES: Final = 100
MAX_PARAM_DEPTH: Final = 64
MAX_PARAM_PROBLEMS: Final = 10
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_SEGMENT_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")

Catalog = Mapping[str, "Collection[str] | None"]


def validate(
    spec: Mapping[str, Any] | WorkflowSpec,
    *,
    catalog: Catalog | None = None,
    name: str | None = None,
    source: str | None = None,
) -> WorkflowSpec:
    """Return the checked spec, or raise :class:`WorkflowSpecError` listing all problems.

    ``spec`` is the bare seed shape ``{step: {...}}`` or the wrapper ``{"name", "steps"}``.
    ``catalog`` maps agent names to the actions they serve (``None``: any action).
    ``name`` is used when the spec itself carries none; ``source`` names the file in errors.
    """
    if isinstance(spec, WorkflowSpec):
        spec = spec.to_dict()
    problems: list[str] = []
    wf_name, raw_steps = _unwrap(spec, problems)
    steps: dict[str, StepSpec] = {}
    graph: dict[str, tuple[str, ...]] = {}
    for step_name, body in raw_steps.items():
        step = _check_step(step_name, body, problems, graph)
        if step is not None:
            steps[step.name] = step
    problems.extend(_graph_problems(graph, set(raw_steps)))
    if catalog is not None:
        problems.extend(_catalog_problems(steps, catalog))
    if problems:
        raise WorkflowSpecError(problems, source=source)
    return WorkflowSpec(
        name=wf_name or name or "workflow", steps=steps, order=topological_order(steps)
    )


def _unwrap(raw: Any, problems: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Accept the bare seed shape and the ``{"name", "steps"}`` wrapper; return (name, steps)."""
    if not isinstance(raw, Mapping):
        problems.append(f"a workflow must be a table/object of steps, got {_kind(raw)}")
        return None, {}
    name: str | None = None
    steps_obj: Any = raw
    if isinstance(raw.get("steps"), Mapping) and "agent" not in raw["steps"]:
        steps_obj = raw["steps"]
        for key in raw:
            if key not in WRAPPER_KEYS:
                problems.append(f"unknown top-level key {key!r}{_hint(key, WRAPPER_KEYS)}")
        raw_name = raw.get("name")
        if raw_name is not None:
            if isinstance(raw_name, str) and raw_name.strip():
                name = raw_name.strip()
            else:
                problems.append(f"workflow name must be a non-empty string, got {_kind(raw_name)}")
    if not steps_obj:
        problems.append("the workflow is empty: it needs at least one step")
        return name, {}
    if len(steps_obj) > MAX_STEPS:
        problems.append(f"the workflow has {len(steps_obj)} steps; at most {MAX_STEPS} allowed")
        return name, {}
    steps: dict[str, Any] = {}
    for key, body in steps_obj.items():
        if not isinstance(key, str) or not _NAME_RE.match(key):
            problems.append(
                f"step name {key!r} is invalid: use letters, digits, '_', '.', '-' (max 128)"
            )
            continue
        steps[key] = body
    return name, steps


def _check_step(name: str, body: Any, problems: list[str],
                graph: dict[str, tuple[str, ...]]) -> StepSpec | None:
    """Type-check one step's keys; append problems and return None when any is wrong.

    A well-formed ``depends_on`` goes into ``graph`` even when other keys are wrong, so
    graph problems are reported in the same pass."""
    where = f"step {name!r}"
    if not isinstance(body, Mapping):
        problems.append(f"{where}: must be a table/object with an 'agent', got {_kind(body)}")
        return None
    before = len(problems)
    for key in body:
        if key not in STEP_KEYS:
            problems.append(f"{where}: unknown key {key!r}{_hint(str(key), STEP_KEYS)}")
    agent = body.get("agent")
    if agent is None:
        problems.append(f"{where}: missing required key 'agent'")
    elif not isinstance(agent, str) or not _valid_service(agent):
        problems.append(
            f"{where}: agent must be a service name like 'data_analyst' or "
            f"'acme/ml/data_analyst', got {agent!r}"
        )
    action = body.get("action", name)
    if not isinstance(action, str) or not _NAME_RE.match(action):
        problems.append(f"{where}: action must be a non-empty name, got {action!r}")
    deps = body.get("depends_on", [])
    if not isinstance(deps, (list, tuple)) or not all(isinstance(d, str) for d in deps):
        problems.append(f"{where}: depends_on must be a list of step names, got {deps!r}")
        deps = []
    else:
        graph[name] = tuple(deps)
        dupes = sorted({d for d in deps if list(deps).count(d) > 1})
        if dupes:
            problems.append(f"{where}: depends_on lists {', '.join(map(repr, dupes))} twice")
    timeout = body.get("timeout")
    if timeout is not None and not _positive_number(timeout):
        problems.append(f"{where}: timeout must be a positive number of seconds, got {timeout!r}")
    retries = body.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        problems.append(f"{where}: retries must be a non-negative integer, got {retries!r}")
    elif retries > MAX_RETRIES:
        problems.append(f"{where}: retries must be at most {MAX_RETRIES}, got {retries}")
    backoff = body.get("backoff", 1.0)
    if not (_positive_number(backoff) or backoff == 0) or isinstance(backoff, bool):
        problems.append(
            f"{where}: backoff must be a non-negative number of seconds, got {backoff!r}"
        )
    params = body.get("params", {})
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        problems.append(f"{where}: params must be a table/object with string keys, got {params!r}")
    else:
        problems.extend(f"{where}: {p}" for p in json_problems(params, "params"))
    if len(problems) > before:
        return None
    return StepSpec(
        name=name, agent=str(agent), action=action, depends_on=tuple(deps),
        timeout=None if timeout is None else float(timeout), retries=retries,
        backoff=float(backoff), params=dict(params),
    )


def json_problems(value: Any, path: str) -> list[str]:
    """Where ``value`` holds something JSON cannot carry (a TOML date, bytes, a set, a
    non-string key, nesting deeper than :data:`MAX_PARAM_DEPTH`): the run's spec is stored
    as JSON, so such a spec would pass here and fail at submit. At most
    :data:`MAX_PARAM_PROBLEMS` problems; the walk is iterative, so any depth is safe."""
    problems: list[str] = []
    todo: list[tuple[Any, str, int]] = [(value, path, 0)]
    while todo and len(problems) < MAX_PARAM_PROBLEMS:
        item, where, depth = todo.pop()
        if item is None or isinstance(item, (str, bool, int, float)):
            continue
        if depth > MAX_PARAM_DEPTH:
            problems.append(f"{where} is nested more than {MAX_PARAM_DEPTH} levels deep")
        elif isinstance(item, Mapping):
            for key, sub in reversed(list(item.items())):
                if isinstance(key, str):
                    todo.append((sub, f"{where}.{key}", depth + 1))
                else:
                    problems.append(f"{where} has a non-string key {key!r}")
        elif isinstance(item, (list, tuple)):
            todo.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in reversed(
                list(enumerate(item))))
        else:
            hint = " (quote it to pass a string)" if isinstance(
                item, (datetime.date, datetime.time)) else ""
            problems.append(f"{where} must be JSON data (string, number, boolean, array or "
                            f"table), got {type(item).__name__} {item!r}{hint}")
    return problems


def _graph_problems(graph: Mapping[str, tuple[str, ...]], names: set[str]) -> list[str]:
    """Self-dependencies, unknown dependencies, then every cycle with its path."""
    problems: list[str] = []
    for name, deps in graph.items():
        for dep in dict.fromkeys(deps):
            if dep == name:
                problems.append(f"step {name!r} depends on itself")
            elif dep not in names:
                problems.append(
                    f"step {name!r} depends on unknown step {dep!r}{_hint(dep, names)}"
                )
    edges = {n: [d for d in deps if d in graph and d != n] for n, deps in graph.items()}
    for cycle in find_cycles(edges):
        problems.append("dependency cycle: " + " -> ".join(cycle + [cycle[0]]))
    return problems


def find_cycles(edges: Mapping[str, list[str]]) -> list[list[str]]:
    """One cycle path per strongly connected component of size > 1 (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            succ = edges.get(node, [])
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    components.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return [_cycle_in(set(comp), edges) for comp in components]


def _cycle_in(component: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """Walk inside one strongly connected component until a node repeats: that is a cycle."""
    start = min(component)
    path: list[str] = [start]
    seen = {start: 0}
    node = start
    for _ in range(len(component) + 1):
        node = min(d for d in edges[node] if d in component)
        if node in seen:
            return path[seen[node]:]
        seen[node] = len(path)
        path.append(node)
    return path  # unreachable: a strongly connected component always closes a cycle


def _catalog_problems(steps: Mapping[str, StepSpec], catalog: Catalog) -> list[str]:
    problems: list[str] = []
    for step in steps.values():
        key = _catalog_key(step.agent, catalog)
        if key is None:
            known = ", ".join(sorted(catalog)) or "none"
            problems.append(
                f"step {step.name!r}: unknown agent {step.agent!r} (known agents: {known})"
            )
            continue
        actions = catalog[key]
        if actions is not None and step.action not in actions:
            problems.append(
                f"step {step.name!r}: agent {step.agent!r} has no action {step.action!r}"
                f" (actions: {', '.join(sorted(actions)) or 'none'})"
            )
    return problems


def _catalog_key(agent: str, catalog: Catalog) -> str | None:
    """The catalog entry ``agent`` names, as the router resolves names: the service itself,
    the service of an instance (``org/ns/service/instance``), or for a one-segment name the
    one service whose last segment it is (the router's short alias). A catalog keyed by
    short names matches a full name by its last segments."""
    if agent in catalog:
        return agent
    service = agent.rpartition("/")[0]
    if agent.count("/") == 3 and service in catalog:
        return service
    if "/" not in agent:
        matches = [k for k in catalog if k.rsplit("/", 1)[-1] == agent]
    else:
        matches = [k for k in catalog if agent.endswith("/" + k)]
    return matches[0] if len(matches) == 1 else None


def topological_order(steps: Mapping[str, StepSpec]) -> tuple[str, ...]:
    """Kahn's order with the file's order as tie-break, so runs are reproducible."""
    remaining = {n: set(s.depends_on) for n, s in steps.items()}
    order: list[str] = []
    for _ in range(len(steps)):
        ready = next((n for n in steps if n in remaining and not remaining[n]), None)
        if ready is None:
            break
        order.append(ready)
        del remaining[ready]
        for deps in remaining.values():
            deps.discard(ready)
    return tuple(order)


def _valid_service(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 4 and all(_SEGMENT_RE.match(p) for p in parts)


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and value > 0
    )


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"


def _hint(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
