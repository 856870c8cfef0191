"""The sensitive-feature denylist: attributes that may never reach a model or a targeting rule.

``decisions.sensitive_features`` (comma-separated; health, religion, ethnicity, ... by default)
is enforced in three places, matched case-insensitively:

- experiment definitions are rejected (422 naming the field) when their targeting (or a
  variant's ``eligible`` condition) reads a sensitive attribute, a variant carries a sensitive
  action feature (learning policies see those), or the policy names one (``segment_by``, or
  any ``*features`` option);
- ``PUT /v1/units/{id}/features`` rejects a sensitive feature name (422 naming it). Rejecting,
  rather than storing it and stripping it later, means Tailor never holds the value at all, so
  it can neither leak through an export nor reach a future model by mistake;
- the decision engine strips sensitive names from the request context before targeting and
  models (a browser can send anything).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from experiments.errors import InvalidDefinition
from tailor_contract.definitions import ExperimentSpec


def denylist(spec: str) -> frozenset[str]:
    """The denylist from its comma-separated setting, lower-cased."""
    return frozenset(f.strip().lower() for f in spec.split(",") if f.strip())


def sensitive_names(names: Iterable[str], deny: frozenset[str]) -> list[str]:
    """The names (sorted) that are on the denylist, compared case-insensitively."""
    return sorted(n for n in names if n.lower() in deny)


def _policy_names(policy: msgspec.Struct) -> dict[str, list[str]]:
    """Attribute names a policy config refers to, by option."""
    named: dict[str, list[str]] = {}
    for field in policy.__struct_fields__:
        if field != "segment_by" and not field.endswith("features"):
            continue
        value = getattr(policy, field)
        if isinstance(value, str):
            named[field] = [value]
        elif isinstance(value, list | tuple | frozenset | set | dict):
            named[field] = [str(v) for v in value]
    return named


def check_experiment(spec: ExperimentSpec, deny: frozenset[str]) -> None:
    """Raise InvalidDefinition (422) naming the field that uses a sensitive attribute."""
    if spec.targeting is not None:
        used = sensitive_names(spec.targeting.attributes(), deny)
        if used:
            raise InvalidDefinition(
                f"sensitive features may not be used in targeting: {used}", field="$.targeting"
            )
    for i, variant in enumerate(spec.variants):
        if variant.eligible is not None:
            used = sensitive_names(variant.eligible.attributes(), deny)
            if used:
                raise InvalidDefinition(
                    f"sensitive features may not be used in eligibility: {used}",
                    field=f"$.variants[{i}].eligible",
                )
        used = sensitive_names(variant.features, deny)
        if used:
            raise InvalidDefinition(
                f"sensitive features may not reach a model: {used}",
                field=f"$.variants[{i}].features",
            )
    for option, names in _policy_names(spec.policy).items():
        used = sensitive_names(names, deny)
        if used:
            raise InvalidDefinition(
                f"sensitive features may not reach a model: {used}", field=f"$.policy.{option}"
            )
