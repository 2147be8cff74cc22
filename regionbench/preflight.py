"""The command line checked before Hydra starts: every mistake as one line, before any store,
cache or model is touched.

    check_command_line(sys.argv[1:])        # or exit 1 with `error: ...` on stderr
    preflight(["ratio=1.5"], conf_dir())   # ValueError: ratio 1.5 is outside [0, 1): ...
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from regionbench.config import conf_dir

MULTIRUN = ("-m", "--multirun")
# Per sweep key, the values whose composition is checked up front (a range(0,1000) sweep is not
# composed a thousand times before it starts; the later values are still composed by Hydra).
CHECKED_VALUES = 50


def check_group_overrides(args: list[str], conf: Path) -> None:
    """Hydra's own error for `metric=taylr` is a page long; give one line naming the choices."""
    from regionbench.common.choices import check_choice

    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        folder = conf / key
        # hydra/... groups also get options from installed plugins (hydra/launcher=joblib)
        if not sep or "." in key or not folder.is_dir() or key.split("/")[0] == "hydra":
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in value.split(","):  # a sweep: metric=taylor,magnitude
            if option and not option.startswith(("glob(", "choice(", "range(")):
                check_choice(f"{key} option", option, options)


def check_command_line(args: list[str]) -> None:
    """`preflight`, or exit 1 with its one line on stderr (`error: ...`)."""
    try:
        preflight(args, conf_dir())
    except ValueError as err:
        sys.exit(f"error: {err}")


def preflight(args: list[str], conf: Path) -> None:
    """Everything wrong with a command line, as one line (a ValueError), before Hydra starts and
    before any store, cache or model is touched: unknown group options and keys, a sweep without
    -m, values of the wrong type, and for a single job every value a stage checks. Hydra's own
    messages for these run to 7+ lines, and some recommend a fix that fails (`+ratoi=0.1`). In a
    sweep, values a stage rejects (ratio=1.5) fail their own job only; the others still run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from regionbench.config import RunConfig

    if any(a.startswith("-") and a not in MULTIRUN for a in args):
        return  # --help, --cfg job, --config-name ...: Hydra's own business
    multirun = any(a in MULTIRUN for a in args)
    overrides = [a for a in args if a not in MULTIRUN]
    check_group_overrides(overrides, conf)
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except OverrideParseException as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            reason = [x for x in lines if not x.startswith(("Error parsing", "See "))] or lines
            raise ValueError(
                f"cannot read the override {text!r} ({reason[0]}): write key=value, e.g. "
                "ratio=0.05, data.eval_langs=[latn,cyrl], or key=a,b with -m for a sweep"
            ) from None
    hydra_settings = {
        o.key_or_group: o for o in parsed if o.key_or_group.startswith("hydra.")
    }  # hydra.run.dir, hydra.sweep.dir: where Hydra writes
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra")]  # Hydra's settings
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        o = sweeps[0]
        what = "one job per value"
        if _is_list(o.key_or_group):
            what += f"; for one list write {o.key_or_group}=[{o.input_line.partition('=')[2]}]"
        raise ValueError(
            f"{o.input_line} is a sweep ({what}): add -m, "
            f"python -m regionbench -m {' '.join(overrides)}"
        )
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    jobs = [fixed]
    swept = {o.input_line: [f"{o.get_key_element()}={v}" for v in _values(o)] for o in sweeps}
    for o in sweeps:  # each value of each swept key once, the other swept keys at their first
        others = [v for s in sweeps if s is not o for v in swept[s.input_line][:1]]
        jobs += [[*fixed, *others, one] for one in swept[o.input_line][:CHECKED_VALUES]]
    runs = []
    for job in jobs if multirun else [fixed]:
        cfg, choices = _compose(job, conf, parsed)
        _check_required(cfg, choices, parsed, conf)
        run = RunConfig.from_cfg(cfg)  # keys and types: wrong in every job of a sweep alike
        runs.append(run)
    check_cwd(multirun, hydra_settings, [r.tracking.uri for r in runs])
    if not multirun:
        from regionbench.pipeline import validate

        validate(run, list(choices))
    else:  # what every job of the sweep would find: once, before the first one
        from regionbench.data.sources import check_reachable

        for run in runs:
            check_reachable(run)


def check_cwd(multirun: bool, hydra_settings: dict, uris: list[str | None]) -> None:
    """The current folder takes what goes there (Hydra's outputs/ or multirun/ folder, the
    default MLflow store mlruns/), or this is one line now: Hydra's own error for an unwritable
    folder is a 24-line traceback from its first mkdir."""
    import tempfile

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = hydra_settings.get(key)
    goes, fixes = [], []
    if given is None or not os.path.isabs(str(given.value())):
        goes.append("Hydra's multirun/ folder" if multirun else "Hydra's outputs/ folder")
        fixes.append(f"{key}=/writable/folder")
    if any(_local_relative(uri) for uri in uris):
        goes.append("the MLflow store mlruns/")
        fixes.append("tracking.uri=sqlite:////writable/mlflow.db")
    if not goes:
        return
    try:
        cwd = os.getcwd()
    except OSError as err:
        raise ValueError(f"the current folder is gone ({err.strerror}): cd to one") from None
    try:
        tempfile.TemporaryFile(dir=cwd).close()
    except OSError as err:
        raise ValueError(
            f"the current folder {cwd} is not writable ({err.strerror or err}): "
            f"{' and '.join(goes)} would go there; run from a writable folder, or set "
            f"{' and '.join(fixes)}"
        ) from None


def _local_relative(uri: str | None) -> bool:
    """Whether a tracking URI puts the store under the current folder (the default does)."""
    if not uri:
        return True
    if uri.startswith("sqlite:///"):
        return not uri.startswith("sqlite:////")
    return "://" not in uri and not os.path.isabs(uri)


def _values(override) -> list[str]:
    """A sweep's values as override strings ([] for one Hydra expands only itself: glob)."""
    try:
        return list(dict.fromkeys(override.sweep_string_iterator()))
    except Exception:  # noqa: BLE001 - glob(...) needs Hydra's config loader
        return []


def _is_list(path: str) -> bool:
    import typing

    from regionbench.config import schema_type

    try:
        hint = schema_type(path)
    except (KeyError, AttributeError):
        return False
    return any(typing.get_origin(h) is list for h in (hint, *typing.get_args(hint)))


def _compose(overrides: list[str], conf: Path, parsed: list) -> tuple[dict, dict[str, str]]:
    """The job's config tree (resolved, no `hydra` node) and the config groups it chose, as
    `python -m regionbench OVERRIDES` composes it; a composition error becomes one line."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from regionbench.config import register

    register()  # the schema conf/config.yaml builds on
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides, return_hydra_config=True)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
        tree = {
            key: OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
            if OmegaConf.is_config(cfg[key])
            else cfg[key]
            for key in cfg
            if key != "hydra"
        }
    except Exception as err:  # noqa: BLE001 - Hydra and OmegaConf errors, in one line
        raise ValueError(_hydra_error(err, parsed)) from None
    return tree, choices


def _check_required(tree: dict, choices: dict[str, str], parsed: list, conf: Path) -> None:
    """A group option's `???` (model=hf: `name: ???`) is lost when Hydra merges it over the
    schema's default, so `model=hf` alone would run sandbox-m: say that the key is needed."""
    import yaml

    from regionbench.config import RunConfig

    given = {o.key_or_group for o in parsed}
    default = RunConfig().to_dict()
    for group, option in choices.items():
        path = conf / group / f"{option}.yaml"
        if option is None or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        node = yaml.safe_load(text) or {}
        root = "" if text.startswith("# @package _global_") else group
        stack = [(root, node)]
        while stack:
            where, node = stack.pop()
            for key, value in node.items() if isinstance(node, dict) else ():
                here = f"{where}.{key}" if where else str(key)
                if isinstance(value, dict):
                    stack.append((here, value))
                elif (
                    value == "???" and here not in given and _get(tree, here) == _get(default, here)
                ):
                    raise ValueError(f"{group}={option} needs {here}: set {here}=...")


def _get(tree: dict, path: str) -> object:
    for part in path.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


# Hydra's messages for a missing or extra `+`, each with the line the user should write instead.
_PLUS_MISTAKES = (
    (
        r"Could not override '([^']+)'\. No match in the defaults list",
        "{line}: {key} is not in the defaults list, so it is added with a plus: +{plain}",
    ),
    (
        r"Multiple values for ([^.\s]+)",
        "{line}: {key} is already chosen (by the defaults or an experiment), so drop the plus: "
        "{plain}",
    ),
    (
        r"Could not append to config\. An item is already at '([^']+)'",
        "{line}: {key} is already in the config, so drop the plus: {plain}",
    ),
)


def _hydra_error(err: Exception, parsed: list) -> str:
    """One line for a composition error: what was written, what is wrong, what works instead."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        ValidationError,
    )

    from regionbench.common.choices import check_choice
    from regionbench.config import schema_keys, type_error

    cause = err.__cause__ or err
    text = str(err).strip()
    key = getattr(cause, "full_key", None) or ""
    given = {o.key_or_group: o for o in parsed}
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and key:
        parent, _, last = key.rpartition(".")
        try:
            check_choice(f"config key in {parent or 'the root'}", last, schema_keys(parent))
        except ValueError as unknown:
            return str(unknown)
        except KeyError:
            pass
    if isinstance(cause, ValidationError) and key:
        path = re.sub(r"(\[\d+\])+$", "", key)
        o = given.get(path)
        value = o.value() if o is not None and not o.is_sweep_override() else cause.value
        if o is not None and o.is_sweep_override():
            value = re.search(r"override \S+?=(.*)$", text.splitlines()[0])
            value = value.group(1) if value else cause.value
        try:
            return type_error(path, value)
        except KeyError:
            pass
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} has no value and the chosen config needs one: set {key}=..."
    if isinstance(cause, InterpolationResolutionError):
        return f"{key or 'a value'}: {str(cause).splitlines()[0]}"
    for pattern, advice in _PLUS_MISTAKES:
        found = re.match(pattern, text)
        if found:
            key = found.group(1)
            o = given.get(key)
            line = o.input_line if o else key
            return advice.format(line=line, key=key, plain=line.lstrip("+"))
    return (text.splitlines() or [type(err).__name__])[0]


# --- --help ---------------------------------------------------------------------------------
def help_text(part: str) -> str:
    """What `python -m regionbench --help` prints between Hydra's header and footer (the
    `rb_help` resolver of hydra.help.template): `groups`, each config group with its options,
    `+` before the groups a command adds (`+experiment=NAME`) rather than replaces; `keys`, every
    key of the typed schema with its default and its meaning, the comment beside it there."""
    # Hydra fills the template with string.Template: a $ of ours is written $$
    if part == "groups":
        return _groups_help(conf_dir()).replace("$", "$$")
    if part == "keys":
        from regionbench.config import RunConfig

        return "\n".join(_keys_help(RunConfig, "", _schema_comments())).replace("$", "$$")
    raise ValueError(f"rb_help part {part!r}; choices: groups, keys")


def _groups_help(conf: Path) -> str:
    import yaml

    defaults = yaml.safe_load((conf / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    chosen = {k for d in defaults if isinstance(d, dict) for k in d if "/" not in k}
    lines = []
    for folder in sorted(p for p in conf.iterdir() if p.is_dir() and p.name != "hydra"):
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        name = folder.name if folder.name in chosen else f"+{folder.name}"
        lines.append(f"{name}: {options}")
    return "\n".join(lines)


def _schema_comments() -> dict[tuple[str, str], str]:
    """{(class name, field name): its comment}: the comment on the field's line, else the
    comment lines just above it."""
    import ast
    import inspect

    import regionbench.config as config

    source = inspect.getsource(config)
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                continue
            # the comment may sit on any line of a wrapped field, or above it
            span = lines[item.lineno - 1 : item.end_lineno]
            inline = [line.split("  # ", 1)[1] for line in span if "  # " in line]
            above = []
            k = item.lineno - 2
            while k >= 0 and lines[k].strip().startswith("#"):
                above.insert(0, lines[k].strip().lstrip("# "))
                k -= 1
            text = " ".join([*above, *inline])
            found[node.name, item.target.id] = text
    return found


def _keys_help(cls, prefix: str, comments: dict) -> list[str]:
    import dataclasses

    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (
            f.default_factory is not dataclasses.MISSING
            and dataclasses.is_dataclass(f.default_factory())
        ):
            lines += _keys_help(type(f.default_factory()), f"{key}.", comments)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        shown = (
            "null"
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else default
        )
        meaning = comments.get((cls.__name__, f.name), "")
        lines.append(f"  {key}={shown}" + (f"    {meaning}" if meaning else ""))
    return lines
