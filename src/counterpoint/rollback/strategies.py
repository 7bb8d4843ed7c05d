"""How a deployment went out, and the steps that roll it back (seed section 7.1).

The type picks the strategy; a type the seed does not name is rolled back as ``full``:

========== ====== ==============================================================
type       hook   rollback steps
========== ====== ==============================================================
blue-green switch one: traffic back to the previous colour
canary     weight one per weight of ``steps`` (default 50, 25, 0; only those below
                  the canary's current weight): the canary's share goes down step
                  by step until the stable version has all the traffic
rolling    batch  one per batch, last deployed first, each back to the previous
                  version
full       deploy one: the previous version deployed again
========== ====== ==============================================================

Every hook gets ``name``, ``deployment``, ``type``, ``step``, ``steps``,
``version`` (the version restored) and ``from_version`` (the one rolled back), and
per strategy ``colour`` and ``from_colour``; ``weight`` (the canary's share, in
percent) and ``stable_weight``; ``batch`` (1 is the first batch deployed),
``batch_name`` and ``batches``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

from counterpoint.rollback.errors import Refused
from counterpoint.rollback.hooks import Hook

BLUE_GREEN, CANARY, ROLLING, FULL = "blue-green", "canary", "rolling", "full"
STRATEGIES = (BLUE_GREEN, CANARY, ROLLING, FULL)
HOOK_OF = {BLUE_GREEN: "switch", CANARY: "weight", ROLLING: "batch", FULL: "deploy"}
COMMON = ("name", "deployment", "type", "step", "steps", "version", "from_version")
PLACEHOLDERS = {
    "switch": (*COMMON, "colour", "from_colour"),
    "weight": (*COMMON, "weight", "stable_weight"),
    "batch": (*COMMON, "batch", "batch_name", "batches"),
    "deploy": COMMON,
}
COLOURS = ("blue", "green")
DEFAULT_CANARY_STEPS = (50, 25, 0)
DEFAULT_HOOK_TIMEOUT_S = 600.0
#: The options of each strategy (a strategy refuses the others').
OPTIONS = {
    BLUE_GREEN: ("colour", "previous_colour"),
    CANARY: ("weight", "steps"),
    ROLLING: ("batches",),
    FULL: (),
}


def strategy_of(declared: str) -> str:
    """The rollback strategy of a deployment type (case-insensitive; others are ``full``)."""
    name = declared.strip().lower()
    return name if name in STRATEGIES else FULL


@dataclass(frozen=True)
class Rollout:
    """A deployment's strategy, its settings and its hooks (one per hook name)."""

    type: str
    declared: str
    hooks: Mapping[str, Hook] = field(default_factory=dict)
    colour: str = ""
    previous_colour: str = ""
    weight: int = 100
    steps: tuple[int, ...] = ()
    batches: tuple[str, ...] = ()
    timeout_s: float = DEFAULT_HOOK_TIMEOUT_S

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "declared": self.declared,
            "hooks": {k: h.to_json() for k, h in self.hooks.items()},
            "colour": self.colour,
            "previous_colour": self.previous_colour,
            "weight": self.weight,
            "steps": list(self.steps),
            "batches": list(self.batches),
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollout:
        return cls(
            type=data["type"],
            declared=data["declared"],
            hooks={k: Hook.from_json(h) for k, h in data["hooks"].items()},
            colour=data["colour"],
            previous_colour=data["previous_colour"],
            weight=data["weight"],
            steps=tuple(data["steps"]),
            batches=tuple(data["batches"]),
            timeout_s=data["timeout_s"],
        )


def rollout(
    declared: str,
    hooks: Mapping[str, Hook],
    *,
    colour: str | None = None,
    previous_colour: str | None = None,
    weight: int | None = None,
    steps: Sequence[int] | None = None,
    batches: Sequence[str] | None = None,
    timeout_s: float | None = None,
) -> Rollout:
    """A checked :class:`Rollout`; :class:`Refused` names what is missing or wrong."""
    strategy = strategy_of(declared)
    given = {
        "colour": colour,
        "previous_colour": previous_colour,
        "weight": weight,
        "steps": steps,
        "batches": batches,
    }
    for option, value in given.items():
        if value is not None and option not in OPTIONS[strategy]:
            flag = "--" + option.replace("_", "-")
            raise Refused(f"{flag} does not apply to a {strategy} deployment")
    if timeout_s is not None and not timeout_s > 0:
        raise Refused("the hook timeout must be more than 0 s")
    _check_hooks(strategy, hooks)
    base = Rollout(strategy, declared, dict(hooks), timeout_s=timeout_s or DEFAULT_HOOK_TIMEOUT_S)
    if strategy == BLUE_GREEN:
        return _blue_green(base, colour, previous_colour)
    if strategy == CANARY:
        return _canary(base, weight, steps)
    if strategy == ROLLING:
        return _rolling(base, batches)
    return base


def _check_hooks(strategy: str, hooks: Mapping[str, Hook]) -> None:
    needed = HOOK_OF[strategy]
    for name, hook in hooks.items():
        if name != needed:
            raise Refused(
                f"a {strategy} deployment has no {name!r} hook; its rollback uses {needed!r}"
            )
        hook.check(PLACEHOLDERS[name])
    if needed not in hooks:
        raise Refused(
            f"a {strategy} deployment needs a {needed!r} hook to roll back "
            f"(--hook {needed}=COMMAND or --python {needed}=MODULE:FUNCTION)"
        )


def _blue_green(base: Rollout, colour: str | None, previous: str | None) -> Rollout:
    colour = colour or "green"
    if previous is None:
        if colour not in COLOURS:
            raise Refused(f"colour {colour!r} is not blue or green: give --previous-colour")
        previous = COLOURS[1 - COLOURS.index(colour)]
    if not colour.strip() or previous == colour:
        raise Refused(f"the previous colour must differ from the live colour {colour!r}")
    return replace(base, colour=colour, previous_colour=previous)


def _canary(base: Rollout, weight: int | None, steps: Sequence[int] | None) -> Rollout:
    weight = 100 if weight is None else weight
    if not 0 < weight <= 100:
        raise Refused(f"the canary's weight must be from 1 to 100 (percent), not {weight}")
    if steps is None:
        chosen = tuple(w for w in DEFAULT_CANARY_STEPS if w < weight)
    else:
        chosen = tuple(steps)
        bad = [w for w in chosen if not 0 <= w < weight]
        if bad:
            raise Refused(
                f"--steps {bad[0]}: each step must be from 0 to below the weight {weight}"
            )
        if any(a <= b for a, b in pairwise(chosen)):
            raise Refused("--steps must go down: each weight below the one before")
        if not chosen or chosen[-1] != 0:
            raise Refused("--steps must end with 0: all traffic back on the stable version")
    return replace(base, weight=weight, steps=chosen)


def _rolling(base: Rollout, batches: Sequence[str] | None) -> Rollout:
    if not batches:
        raise Refused("a rolling deployment needs its batches: --batches N or --batch NAME ...")
    names = tuple(batches)
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise Refused("batch names must be distinct and not empty")
    return replace(base, batches=names)


@dataclass(frozen=True)
class Step:
    """One rollback step: its 1-based ``number``, the hook it runs and the hook's arguments."""

    number: int
    hook: str
    args: dict[str, Any]


def plan(name: str, deployment: int, version: str, previous: str, spec: Rollout) -> list[Step]:
    """The rollback steps of a deployment, in the order they run."""
    kinds: list[dict[str, Any]]
    if spec.type == BLUE_GREEN:
        kinds = [{"colour": spec.previous_colour, "from_colour": spec.colour}]
    elif spec.type == CANARY:
        kinds = [{"weight": w, "stable_weight": 100 - w} for w in spec.steps]
    elif spec.type == ROLLING:
        count = len(spec.batches)
        kinds = [
            {"batch": i + 1, "batch_name": spec.batches[i], "batches": count}
            for i in reversed(range(count))
        ]
    else:
        kinds = [{}]
    common = {"name": name, "deployment": deployment, "type": spec.type}
    hook = HOOK_OF[spec.type]
    return [
        Step(
            number,
            hook,
            {
                **common,
                "step": number,
                "steps": len(kinds),
                "version": previous,
                "from_version": version,
                **extra,
            },
        )
        for number, extra in enumerate(kinds, start=1)
    ]


def describe(hook: str, args: Mapping[str, Any]) -> str:
    """A step in a few words: ``switch to blue``, ``canary at 25%``, ``batch 2 to 1.0``."""
    if hook == "switch":
        return f"switch traffic to {args['colour']} ({args['version']})"
    if hook == "weight":
        return f"canary at {args['weight']}%, stable {args['version']} at {args['stable_weight']}%"
    if hook == "batch":
        label = args["batch_name"]
        batch = f"batch {args['batch']}" + ("" if label == str(args["batch"]) else f" ({label})")
        return f"{batch} back to {args['version']}"
    return f"deploy {args['version']}"


__all__ = [
    "BLUE_GREEN",
    "CANARY",
    "FULL",
    "HOOK_OF",
    "PLACEHOLDERS",
    "ROLLING",
    "STRATEGIES",
    "Rollout",
    "Step",
    "describe",
    "plan",
    "rollout",
    "strategy_of",
]
