"""What the Prefect UI shows: the run form's schema, the artifacts' keys and order, links and pictures."""

from __future__ import annotations

import pytest


def _no_null_types(schema, where="") -> list[str]:
    """Paths in a JSON schema where a value may be null (the UI form shows 'Property is type "None"')."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "null" or schema.get("default", 0) is None:
            found.append(where)
        for k, v in schema.items():
            found += _no_null_types(v, f"{where}/{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            found += _no_null_types(v, f"{where}/{i}")
    return found


@pytest.mark.parametrize(
    "entry, model",
    [
        ("flows.retrain:retrain", "RetrainParams"),
        ("flows.curate_only:curate_only", "RetrainParams"),
        ("flows.frontier_baseline:frontier_baseline", "RetrainParams"),
        ("flows.evaluate_only:evaluate_only", "EvaluateParams"),
    ],
)
def test_optional_fields_of_the_run_form_are_plain_optional_text(entry, model):
    import importlib

    from prefect.utilities.callables import parameter_schema

    module, name = entry.split(":")
    schema = parameter_schema(getattr(importlib.import_module(module), name).fn).model_dump()
    props = schema["definitions"][model]["properties"]
    optional = ["source", "workdir"] + (["adapter"] if model == "EvaluateParams" else [])
    for field in optional:
        p = props[field]
        assert (p["type"], p["default"], p["title"]) == ("string", "", field.capitalize()), p
        assert "anyOf" not in p and p["description"]
    assert not set(optional) & set(schema["definitions"][model].get("required", []))
    assert _no_null_types(schema) == []
    assert {k: schema["properties"]["params"]["default"][k] for k in optional} == dict.fromkeys(optional, "")


def test_none_from_the_command_line_reads_as_not_given():
    from flows.common import RetrainParams, resolve_config

    p = RetrainParams(profile="demo", source=None, workdir=None)
    assert (p.source, p.workdir) == ("", "")
    cfg = resolve_config(p)
    assert cfg.source.startswith("demo:")  # the profile's
