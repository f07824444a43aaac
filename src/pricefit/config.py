"""The run's configuration: RunConfig holds every stage's settings; profiles, overrides, loading.

Each stage's settings class lives in :mod:`pricefit.settings` (one module per stage, imported by
that stage's code, so a step's cache key covers its own settings only); they are re-exported here
for the commands and flows that handle a whole run. Profiles are YAML files
(deployments/profiles/*.yaml, or the folder in PRICEFIT_PROFILES: :func:`profiles_dir`) that fill a
RunConfig; command-line ``--set key.sub=value`` overrides apply on top. Impossible combinations
fail here, once, with a message that says what to change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from .errors import PricefitError
from .parsing import DEFAULT_MAX_PRICE, DEFAULT_MIN_PRICE
from .paths import cache_home, shared_data_dir
from .settings.base import Stage
from .settings.baselines import CLASSICAL_BASELINES, BaselinesConfig, FrontierConfig
from .settings.curate import DEFAULT_DROP_DETAIL_KEYS, CurateConfig
from .settings.evaluate import EvaluateConfig
from .settings.promote import PromoteConfig
from .settings.tokenize import (
    DEFAULT_COMPLETION_TEMPLATE,
    DEFAULT_PROMPT_TEMPLATE,
    TokenizeConfig,
)
from .settings.train import Quantization, TrainConfig
from .slices import SliceSpec

__all__ = [
    "BASE_MODEL_FIELDS", "CLASSICAL_BASELINES", "DEFAULT_COMPLETION_TEMPLATE", "DEFAULT_DROP_DETAIL_KEYS",
    "DEFAULT_PROMPT_TEMPLATE", "BaselinesConfig", "CurateConfig", "EvaluateConfig", "FrontierConfig", "PromoteConfig",
    "Quantization", "RunConfig", "TokenizeConfig", "TrainConfig", "apply_overrides", "cache_home", "list_profiles",
    "load_run_config", "load_slices", "load_stage_config", "load_yaml", "profiles_dir", "shared_data_dir", "validate_model",
]

# where each stage names the base model: a profile writes it once, as the top-level base_model
BASE_MODEL_FIELDS = (("curate", "tokenizer"), ("tokenize", "base_model"), ("train", "base_model"), ("baselines", "base_model"))


class RunConfig(Stage):
    """Everything one retrain run needs."""

    profile: str = Field("demo", description="Name of the profile this config came from.")
    base_model: str | None = Field(
        None,
        description="The base model, named once: fills curate.tokenizer, tokenize.base_model, train.base_model and "
        "baselines.base_model where those are not set (they must all agree). None: the stages' own values.",
    )
    source: str = Field("demo:600", description="Listings source: demo[:N], file/glob, hf:Cat1,Cat2, csv:...")
    workdir: str = Field(
        default_factory=lambda: os.environ.get("PRICEFIT_WORKDIR", "runs"),
        description="Root directory of artifacts and caches.",
    )
    curate: CurateConfig = Field(default_factory=CurateConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    slices: list[SliceSpec] = Field(
        default_factory=list, description="Named slices of held-out items, reported beside the overall metrics (pricefit.slices)."
    )

    tracking: Literal["auto", "mlflow", "off"] = Field("auto", description="MLflow tracking (pricefit.tracking): auto = when MLFLOW_TRACKING_URI is set.")

    @model_validator(mode="before")
    @classmethod
    def _fill_base_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("base_model"):
            return data
        data = dict(data)
        for section, key in BASE_MODEL_FIELDS:
            sec = data.get(section)
            if sec is None or isinstance(sec, dict):
                sec = dict(sec or {})
                sec.setdefault(key, data["base_model"])
                data[section] = sec
        return data

    @model_validator(mode="after")
    def _check_written_once(self) -> "RunConfig":
        """The settings two sections share hold one value: the base model, the held-out items, the clip range."""
        named = {f"{section}.{key}": getattr(getattr(self, section), key) for section, key in BASE_MODEL_FIELDS}
        if self.base_model:
            named = {"base_model": self.base_model, **named}
        (first, value), *rest = named.items()
        for other, v in rest:
            if v != value:
                raise ValueError(
                    f"{first} is {value!r} but {other} is {v!r}: every stage must use one base model; "
                    "write it once as the top-level base_model and remove the per-section values"
                )
        self.__dict__["base_model"] = value  # (validate_assignment would re-run this validator)
        b, e = self.baselines, self.evaluate
        if (b.split, b.max_items) != (e.split, e.max_items):
            raise ValueError(
                f"baselines score split={b.split} max_items={b.max_items} but evaluate scores split={e.split} "
                f"max_items={e.max_items}: the comparison would not be on the same items; "
                "set baselines.split/max_items equal to evaluate.split/max_items"
            )
        if (e.min_price, e.max_price) != (DEFAULT_MIN_PRICE, DEFAULT_MAX_PRICE):
            raise ValueError(
                f"evaluate clips predictions to [{e.min_price}, {e.max_price}] but the language-model baselines clip "
                f"theirs to [{DEFAULT_MIN_PRICE}, {DEFAULT_MAX_PRICE}] (pricefit.parsing): the comparison would not be fair; "
                "leave evaluate.min_price/max_price at that range in a run profile"
            )
        return self

    @model_validator(mode="after")
    def _check_slices(self) -> "RunConfig":
        names = [s.name for s in self.slices]
        if len(set(names)) != len(names):
            raise ValueError(f"slice names must be unique: {names}")
        if self.promote.slice is not None and self.promote.slice not in names:
            raise ValueError(f"promote.slice {self.promote.slice!r} is not a declared slice ({', '.join(names) or 'none declared'})")
        unknown = sorted(set(self.train.oversample) - set(names))
        if unknown:
            raise ValueError(f"train.oversample names undeclared slices {unknown} (declared: {', '.join(names) or 'none'})")
        return self


# ----------------------------------------------------------------------------------------------
# loading


def _parse_scalar(value: str) -> Any:
    """Parse an override value the way YAML would ("1e-4" -> float, "true" -> bool, "[a,b]" -> list)."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        # YAML 1.1 reads "1e-4" as a string; a learning rate is a number
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


# An override is "key.sub=value" (--set: the value parsed as YAML would), or ("key.sub", value,
# "what the user typed") when a typed command-line option gave it (e.g. ("max_items", 5,
# "--max-items 5")): set as it is, never turned into text and parsed again. Errors name what the
# user typed. ("key.sub=value", label) is text with a label.
Override = str | tuple[str, str] | tuple[str, Any, str]


def _split_override(item: Override) -> tuple[str, str]:
    """(text whose part before "=" is the key path, what the user typed)."""
    if isinstance(item, tuple):
        return (f"{item[0]}=", item[2]) if len(item) == 3 else (item[0], item[1])
    return item, f"--set {item}"


def _override_path(text: str, label: str) -> tuple[str, ...]:
    if "=" not in text:
        raise PricefitError(f"{label}: an override is key=value", hint="write e.g. --set train.lora_r=16")
    return tuple(p.strip() for p in text.split("=", 1)[0].strip().split("."))


def _strip_section(overrides: list[Override] | None, section: str) -> list[Override]:
    """Stage commands accept both "lora_r=16" and "train.lora_r=16"; the label keeps what was typed."""
    out: list[Override] = []
    for item in overrides or []:
        if isinstance(item, tuple) and len(item) == 3:
            key, value, label = item
            out.append((key.removeprefix(section + "."), value, label))
            continue
        text, label = _split_override(item)
        if text.startswith(section + "."):
            text = text[len(section) + 1:]
        out.append((text, label))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[Override] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (copy)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides or []:
        text, label = _split_override(item)
        parts = _override_path(text, label)
        typed = isinstance(item, tuple) and len(item) == 3
        value = item[1] if typed else _parse_scalar(text.split("=", 1)[1])
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                typed = label.split("=", 1)[0].split(".")
                keep = ".".join(typed[: len(typed) - (len(parts) - i - 2) - 1])
                raise PricefitError(f"{label}: {'.'.join(parts[:i + 1])} is a setting, not a section", hint=f"write {keep}=VALUE")
        node[parts[-1]] = value
    return out


def _section_model(cls: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the setting at ``path`` (None when path leaves the models)."""
    import typing

    model: Any = cls
    for part in path:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _suggest(cls: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The nearest valid name for the unknown last part of ``loc`` (difflib over its section's fields)."""
    import difflib

    if not loc or not isinstance(loc[-1], str):
        return None
    model = _section_model(cls, loc[:-1])
    if model is None:
        return None
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def _fixed_label(label: str, wrong: str, right: str) -> str | None:
    """``label`` ("--set train.learnig_rate=2e-4") with the misspelled key part replaced."""
    if not label.startswith("--set ") or "=" not in label:
        return None
    key, value = label[len("--set "):].split("=", 1)
    parts = key.split(".")
    if wrong not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index(wrong)
    parts[i] = right
    return f"--set {'.'.join(parts)}={value}"


def validate_model(
    cls: type[BaseModel],
    data: dict[str, Any],
    where: str,
    overrides: list[Override] | None = None,
    prefix: str = "",
) -> Any:
    """Validate ``data`` as ``cls``; each error names where its value came from and the nearest valid key.

    ``where`` is the file the data came from (or "defaults"); ``overrides`` are the overrides applied
    on top (an error at a key one of them set names that override, as the user typed it);
    ``prefix`` is the section name shown before each key (a stage config: "train").
    """
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        paths = []
        for item in overrides or []:
            text, label = _split_override(item)
            paths.append((_override_path(text, label), label))
        found: list[tuple[str, str]] = []  # (where the value came from, what is wrong)
        hints: list[str] = []
        for err in e.errors():
            loc = tuple(err["loc"])
            shown = ((prefix,) if prefix else ()) + loc
            key = ".".join(str(x) for x in shown) or "(root)"
            # the last override that set this key, a key inside it, or the section around it
            origin = next((label for path, label in reversed(paths) if path[: len(loc)] == loc[: len(path)]), None)
            if err["type"] == "extra_forbidden":
                near = _suggest(cls, loc)
                what = f"{key} is not a {'section' if isinstance(err.get('input'), dict) else 'setting'}"
                if near:
                    right = ".".join(str(x) for x in shown[:-1] + (near,))
                    what += f"; did you mean {right}?"
                    fixed = _fixed_label(origin, str(loc[-1]), near) if origin else None
                    hints.append(f"write {fixed}" if fixed else f"use {right}" if origin else f"rename {key} to {right} in {where}")
                else:
                    section = _section_model(cls, loc[:-1])
                    if section is not None:
                        hints.append(f"valid keys of {'.'.join(str(x) for x in shown[:-1]) or 'the top level'}: {', '.join(section.model_fields)}")
            else:
                what = f"{key}: {err['msg']}"
            found.append((origin or where, what))
        order = {label: i for i, (_, label) in enumerate(paths)}
        found.sort(key=lambda f: order.get(f[0], len(order)))  # in the order the user typed them
        if all(src == where for src, _ in found) and where != "defaults":
            head, lines = f"invalid configuration in {where}", [what for _, what in found]
        else:
            head, lines = "invalid configuration", [f"{src}: {what}" for src, what in found]
        message = f"{head}: {lines[0]}" if len(lines) == 1 else f"{head}:\n" + "\n".join(f"  {line}" for line in lines)
        raise PricefitError(
            message,
            hint="; ".join(dict.fromkeys(hints)) or "fix the named keys in the profile or --set override",
        ) from None


PROFILES_ENV = "PRICEFIT_PROFILES"
PROFILES_SUBDIR = Path("deployments") / "profiles"


def find_profiles_dir(start: Path) -> Path | None:
    """The ``deployments/profiles`` folder of the project that holds ``start``: the nearest one in
    ``start`` or a folder above it (a checkout, whatever its layout), or None (an installed wheel)."""
    for folder in (start, *start.parents):
        if (folder / PROFILES_SUBDIR).is_dir():
            return folder / PROFILES_SUBDIR
    return None


def profiles_dir() -> Path:
    """Where a profile named without a path is read from, the one lookup: ``$PRICEFIT_PROFILES``
    when set, else the ``deployments/profiles`` of the checkout this package is imported from."""
    env = os.environ.get(PROFILES_ENV)
    if env:
        d = Path(os.path.expanduser(env))
        if not d.is_dir():
            raise PricefitError(f"{PROFILES_ENV}={env} is not a folder", hint=f"point {PROFILES_ENV} at a folder of profile YAML files")
        return d
    d = find_profiles_dir(Path(__file__).resolve().parent)
    if d is None:
        raise PricefitError(
            f"no profiles folder: pricefit is not imported from a checkout with {PROFILES_SUBDIR}/",
            hint=f"export {PROFILES_ENV}=/path/to/deployments/profiles, or pass the profile as a path to its YAML file",
        )
    return d


def list_profiles() -> list[str]:
    """The profile names in :func:`profiles_dir` ([] when there is no such folder)."""
    try:
        d = profiles_dir()
    except PricefitError:
        return []
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise PricefitError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise PricefitError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PricefitError(f"config file {p} must hold a mapping at the top level")
    return data


def load_run_config(profile: str | None = None, config_file: str | None = None, overrides: list[Override] | None = None) -> RunConfig:
    """Profile (by name or path) + overrides -> validated RunConfig."""
    data: dict[str, Any] = {}
    where = "defaults"
    if profile:
        path = Path(profile)
        # a name unless it looks like a file: "gpu-qwen1.5b" has a suffix (".5b") but is a name
        if path.suffix not in (".yaml", ".yml") and "/" not in profile and not path.is_file():
            path = profiles_dir() / f"{profile}.yaml"
        if not path.exists():
            raise PricefitError(
                f"profile {profile!r} not found at {path}",
                hint=f"available profiles: {', '.join(list_profiles()) or '(none)'}",
            )
        data = load_yaml(path)
        data.setdefault("profile", path.stem)
        where = str(path)
    if config_file:
        data = load_yaml(config_file)
        where = config_file
    data = apply_overrides(data, overrides)
    return validate_model(RunConfig, data, where, overrides)


def load_stage_config(cls: type[BaseModel], config_file: str | None, section: str, overrides: list[Override] | None = None) -> Any:
    """A stage config from a YAML file (either the stage mapping itself or a RunConfig with ``section``).

    Overrides may name the section or not ("lora_r=16" and "train.lora_r=16" are the same).
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if config_file:
        raw = load_yaml(config_file)
        if section in raw:
            data = dict(raw[section] or {})
        elif set(raw) & set(RunConfig.model_fields):  # a run profile without this stage's section
            data = {}
        else:  # the stage mapping itself
            data = raw
        where = config_file
        # a profile names its base model once, at the top (as RunConfig fills it)
        for key in (k for sec, k in BASE_MODEL_FIELDS if sec == section and raw.get("base_model") and set(raw) & set(RunConfig.model_fields)):
            data.setdefault(key, raw["base_model"])
    stripped = _strip_section(overrides, section)
    data = apply_overrides(data, stripped)
    return validate_model(cls, data, where, stripped, prefix=section)


def load_slices(config_file: str | os.PathLike | None) -> list[SliceSpec]:
    """The ``slices:`` of a run profile given to a stage command's --config (none without one)."""
    if not config_file:
        return []
    raw = load_yaml(config_file).get("slices") or []
    if not isinstance(raw, list):
        raise PricefitError(f"{config_file}: slices must be a list of slice mappings", hint="see pricefit.slices")
    return [validate_model(SliceSpec, item, f"{config_file} slices[{i}]") for i, item in enumerate(raw)]
