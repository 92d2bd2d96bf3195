"""The study spec (``study.yaml``): what to measure, which runs to train, how to correlate.

:func:`load_spec` reads a YAML file (or the name of a packaged spec, e.g. ``mini``) into a
:class:`StudySpec`; every field is validated here, and an error names the field and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import check_types, comma_list
from ..errors import ConfigError, InputFileError, SpatialProbeError
from ..schema import COMPARED_WITH_REPA, FD_DIGITS, GFID, LAUNCHERS, PROPERTIES

PACKAGED = ("mini",)
CLUSTERS = ("slurm", "local", "debug")
FID_PROTOCOLS = ("digits", "adm")
QUALITY_COL = {"digits": FD_DIGITS, "adm": GFID}
DTYPES = ("fp16", "bf16", "fp32")
#: option keys whose values name input files or folders: made absolute, and their bytes fingerprinted
PATH_KEYS = ("masks", "labels", "val_labels", "images", "ref", "inception_weights", "vae", "latents_dir",
             "weights", "weights_dir", "known_gfid")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


@dataclass
class EncoderEntry:
    """One teacher / encoder of the study: a zoo id or variant (``hog@mix_mean=0.25``)."""

    id: str
    family: str | None = None  #: label in the results table (default: the zoo family)
    random_init: bool = False  #: the architecture with random weights (no checkpoint needed)
    seed: int = 0  #: seed of the random init
    seeds: list[int] | None = None  #: training seeds for this teacher (default: training.seeds)
    define: dict[str, Any] | None = None  #: an encoders.yaml row, registered at run time under ``id``


@dataclass
class ExecutorSpec:
    """Options of ``launcher: submitit`` (ignored by ``local``)."""

    cluster: str = "slurm"  #: slurm | local (processes on this machine; what the tests use) | debug
    partition: str | None = None  #: partition of every job [default: the cluster's default partition]
    extract_partition: str | None = None  #: partition of the extraction jobs [default: partition]
    gpus_per_node: int = 1  #: GPUs (= DDP ranks) per training job; 1 = no DDP; 0 = no GPU request (CPU partitions)
    tasks_per_node: int | None = None  #: ranks (DDP) per training job [default: gpus_per_node, at least 1]
    nodes: int = 1
    cpus_per_task: int = 8
    timeout_min: int = 240
    mem_gb: int | None = 64
    array_parallelism: int = 32  #: most jobs of one submitted array running at once
    poll_s: float = 5.0  #: how often the controller checks running jobs
    folder: str | None = None  #: submitit logs [default: OUT/submitit]
    slurm_extra: dict[str, Any] = field(default_factory=dict)  #: further ``slurm_*`` parameters


@dataclass
class PropertiesSpec:
    images: str = "builtin:digits"  #: image source of extraction, metrics, probe and injection
    limit: int | None = None  #: only the first N images
    resolution: int = 256
    dtype: str = "fp16"
    batch_size: int = 0
    metrics: dict[str, Any] | None = field(default_factory=dict)  #: MetricsConfig options; null = skip
    probe: dict[str, Any] | None = field(default_factory=dict)  #: ProbeConfig options; null = skip
    inject: dict[str, Any] | None = None  #: InjectConfig options (alphas, form, mix); null = skip
    decode_cache: bool = True  #: decode + crop the images once into OUT/cache/images/, shared by every extraction


@dataclass
class TrainingSpec:
    model: str = "jit-tiny"
    methods: list[str] = field(default_factory=lambda: ["repa", "irepa"])
    baseline: bool = True  #: also train the no-alignment baseline (method none), once per seed
    baseline_seeds: list[int] | None = None  #: default: training.seeds
    steps: int = 80
    batch_size: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    images: str = "builtin:digits"
    options: dict[str, Any] = field(default_factory=dict)  #: further TrainConfig fields (hflip, lr, ...)
    recipe: str | None = None  #: an official recipe (spatialprobe ls recipes); model, options and steps here win
    sample: dict[str, Any] = field(default_factory=lambda: {"n": 256})  #: SampleConfig fields
    fid: dict[str, Any] = field(default_factory=lambda: {"protocol": "digits"})  #: protocol + its options
    teacher_cache_mb: int = 2048  #: in-memory cache of teacher tokens per image (0 = off)



def repa_differences(methods: list[str]) -> list[str]:
    """The methods m trained together with REPA, each giving a ``<q>_repa_minus_<m>`` column."""
    return [m for m in COMPARED_WITH_REPA if "repa" in methods and m in methods]


@dataclass
class CorrelateSpec:
    x: list[str] = field(default_factory=lambda: list(PROPERTIES))
    y: list[str] | None = None  #: default: one per method, plus REPA − iREPA (or the known column)
    family_col: str = "family"
    control: str | None = None
    n_resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class StudySpec:
    name: str = "study"
    encoders: list[EncoderEntry] = field(default_factory=list)
    properties: PropertiesSpec = field(default_factory=PropertiesSpec)
    training: TrainingSpec | None = None
    known_gfid: str | None = None  #: packaged reference (e.g. sit-xl-100k) or a CSV with encoder + gfid
    known_gfid_col: str = "gfid"
    correlate: CorrelateSpec = field(default_factory=CorrelateSpec)
    device: str = "auto"
    threads: int | None = None  #: torch CPU threads of every node (1 avoids oversubscription on shared CPUs)
    weights_dir: str | None = None
    #: join known_gfid's published numbers (of the pretrained encoders) to random-init encoders anyway;
    #: the rows are then marked in results.csv (quality_note) and in the report
    known_gfid_random_init: bool = False
    launcher: str = "local"
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    smoke: dict[str, Any] | None = None  #: overrides applied by ``--smoke`` (same layout as the spec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def quality_col(self) -> str:
        if self.training is None:
            return self.known_gfid_col
        return QUALITY_COL[self.training.fid.get("protocol", "digits")]


# ------------------------------------------------------------------------------------------ parsing

def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_keys(data: dict, cls, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"study spec: {where} must be a mapping, not {type(data).__name__}.")
    bad = sorted(set(data) - set(_fields(cls)))
    if bad:
        raise ConfigError(f"study spec: unknown field(s) {', '.join(f'{where}.{b}' if where else b for b in bad)}; "
                          f"valid{' in ' + where if where else ''}: {', '.join(sorted(_fields(cls)))}.")


_SCALARS = {bool: "true or false (not quoted)", int: "an integer", float: "a number", str: "a string"}


def _scalar_type(t: Any) -> tuple[type | None, bool]:
    """(the scalar type of annotation ``t`` or None, whether None is allowed)."""
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 and rest[0] in _SCALARS else None), type(None) in args
    return (t if t in _SCALARS else None), False


def _check_scalars(obj: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """Every scalar field of the dataclass ``obj`` has its declared type, strictly: a quoted ``"false"`` is
    not a boolean, ``many`` is not an integer, ``5`` is not a model name. The error names the field."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        t, optional = _scalar_type(hints[f.name])
        v = getattr(obj, f.name)
        if t is None or (v is None and optional):
            continue
        ok = isinstance(v, t) and (t is bool or not isinstance(v, bool))
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            name = f"{where}.{f.name}" if where else f.name
            hint = " (write true or false without quotes)" if t is bool and isinstance(v, str) else ""
            raise ConfigError(f"study spec: {name} must be {_SCALARS[t]}{' or null' if optional else ''}; "
                              f"got {v!r}{hint}.")


def _check_enum(v: Any, valid: tuple[str, ...] | list[str], where: str) -> None:
    if v not in valid:
        raise ConfigError(f"study spec: {where} {v!r} is not valid; use one of {', '.join(valid)}.")


def _check_options_types(opts: dict | None, cls, where: str) -> None:
    """The option values of a stage's config (``properties.probe``, ``training.options``, ...) have the
    types of its dataclass fields (checked the way ``config.resolve`` checks them at run time)."""
    if not opts:
        return
    try:
        check_types(cls, opts)
    except ConfigError as exc:
        raise ConfigError(f"study spec: {where}: {exc}") from None


def check_device_name(device: str, where: str = "device") -> None:
    """``device`` is spelled as a device (auto, cpu, cuda, cuda:N, mps); availability is checked by the runner."""
    d = device.strip().lower()
    base, _, idx = d.partition(":")
    if d in ("auto", "cpu", "cuda", "mps") or (base == "cuda" and idx.isdigit()):
        return
    raise ConfigError(f"study spec: {where} {device!r} is not a device; use {DEVICE_HELP}.")


def canonical_id(name: str) -> str:
    """The canonical id of an encoder or variant (aliases resolved; variants in their fixed order)."""
    from .. import encoders as E

    if "@" in name:
        parse = getattr(E, "parse_variant", None)
        if parse is None:
            raise ConfigError(f"encoder {name!r}: variants (ID@transform=value) need spatialprobe.encoders."
                              "parse_variant, which this installation lacks.")
        return parse(name).id
    try:
        return E.spec(name).id
    except Exception:  # noqa: BLE001 - unknown ids fail later with did-you-mean, in their node
        return name


def _dups(values: list) -> list:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def _unique(values: list, where: str) -> list:
    dup = _dups(values)
    if dup:
        raise ConfigError(f"study spec: {where} lists {', '.join(map(str, dup))} more than once; give each once.")
    return values


def _int_list(v: Any, where: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ConfigError(f"study spec: {where} must be a non-empty list of integers, e.g. [0, 1]; got {v!r}.")
    return _unique(list(v), where)


def _str_list(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        v = comma_list(v)
    if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"study spec: {where} must be a non-empty list of names; got {v!r}.")
    return _unique(list(v), where)


def _pos_int(v: Any, where: str, allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"study spec: {where} must be a positive integer; got {v!r}.")
    return v


def _options(v: Any, where: str, cls, allow_none: bool = True, extra: tuple[str, ...] = ()) -> Any:
    """A mapping of options of dataclass ``cls`` (unknown keys are an error naming them)."""
    if v is None and allow_none:
        return None
    if v is True:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"study spec: {where} must be a mapping of options (or null to skip); got {v!r}.")
    names = set(_fields(cls)) | set(extra)
    bad = sorted(set(v) - names)
    if bad:
        raise ConfigError(f"study spec: unknown option(s) {', '.join(f'{where}.{b}' for b in bad)}; "
                          f"valid: {', '.join(sorted(names))}.")
    return dict(v)


def _encoder(v: Any, i: int) -> EncoderEntry:
    where = f"encoders[{i}]"
    if isinstance(v, str):
        v = {"id": v}
    if not isinstance(v, dict) or "id" not in v:
        raise ConfigError(f"study spec: {where} must be an encoder id (e.g. hog, dinov2-vit-b@mix_cls=0.1) "
                          f"or a mapping with 'id'; got {v!r}.")
    _check_keys(v, EncoderEntry, where)
    e = EncoderEntry(**v)
    if not isinstance(e.id, str) or not e.id.strip():
        raise ConfigError(f"study spec: {where}.id must be a non-empty string.")
    _check_scalars(e, where)
    if e.seeds is not None:
        e.seeds = _int_list(e.seeds, f"{where}.seeds")
    if e.define is not None and not isinstance(e.define, dict):
        raise ConfigError(f"study spec: {where}.define must be an encoders.yaml row (a mapping).")
    return e


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_spec(data: dict[str, Any], *, smoke: bool = False) -> StudySpec:
    """Validate a spec mapping into a :class:`StudySpec` (``smoke`` applies its ``smoke:`` overrides)."""
    if not isinstance(data, dict):
        raise ConfigError(f"study spec must be a mapping of field: value, not {type(data).__name__}.")
    data = dict(data)
    if smoke:
        if not data.get("smoke"):
            raise ConfigError("--smoke: this spec has no 'smoke:' section (overrides for a quick run).")
        data = _merge(data, data["smoke"])
    _check_keys(data, StudySpec, "")
    s = StudySpec()
    s.name = str(data.get("name", "study"))
    encs = data.get("encoders")
    if not isinstance(encs, list) or not encs:
        raise ConfigError("study spec: encoders must be a non-empty list of encoder ids or variants, "
                          "e.g. [hog, sift, dinov2-vit-b@mix_cls=0.1].")
    s.encoders = [_encoder(v, i) for i, v in enumerate(encs)]
    ids = [e.id for e in s.encoders]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"study spec: encoders lists {', '.join(dup)} more than once.")
    canon: dict[str, str] = {}
    for e in s.encoders:  # one teacher spelled two ways (pixels@mix_mean=0.75 and =.75) is one teacher
        try:
            cid = canonical_id(e.id)
        except SpatialProbeError:  # a malformed variant fails in its node, with its own message
            cid = e.id
        if cid in canon:
            raise ConfigError(f"study spec: encoders {canon[cid]!r} and {e.id!r} are one encoder (canonical id "
                              f"{cid!r}); list it once.")
        canon[cid] = e.id

    from ..extract import ExtractConfig  # noqa: F401 - validated at run time
    from ..inject import InjectConfig
    from ..metrics.run import MetricsConfig
    from ..probe import ProbeConfig
    from ..train.config import SampleConfig, TrainConfig

    p = data.get("properties", {}) or {}
    _check_keys(p, PropertiesSpec, "properties")
    s.properties = PropertiesSpec(**p)
    pp = s.properties
    _check_scalars(pp, "properties")
    _check_enum(pp.dtype, DTYPES, "properties.dtype")
    if isinstance(pp.batch_size, int) and pp.batch_size < 0:
        raise ConfigError(f"study spec: properties.batch_size must be >= 0 (0 = automatic); got {pp.batch_size}.")
    pp.limit = _pos_int(pp.limit, "properties.limit", allow_none=True)
    pp.resolution = _pos_int(pp.resolution, "properties.resolution")
    if not isinstance(pp.decode_cache, bool):
        raise ConfigError(f"study spec: properties.decode_cache must be true or false, got {pp.decode_cache!r}.")
    pp.metrics = _options(pp.metrics, "properties.metrics", MetricsConfig)
    pp.probe = _options(pp.probe, "properties.probe", ProbeConfig)
    pp.inject = _options(pp.inject, "properties.inject", InjectConfig)
    for where, opts, cls in (("metrics", pp.metrics, MetricsConfig), ("probe", pp.probe, ProbeConfig),
                             ("inject", pp.inject, InjectConfig)):
        _check_options_types(opts, cls, f"properties.{where}")
    for where, opts, owned in (("metrics", pp.metrics, ("features", "out", "device")),
                               ("probe", pp.probe, ("features", "out", "device")),
                               ("inject", pp.inject, ("features", "encoder", "images", "out", "device"))):
        clash = sorted(set(opts or {}) & set(owned))
        if clash:
            raise ConfigError(f"study spec: properties.{where}.{clash[0]} is set by the study itself; remove it.")

    t = data.get("training")
    if t is not None:
        if t is False:
            t = None
        else:
            _check_keys(t, TrainingSpec, "training")
            s.training = TrainingSpec(**t)
            tr = s.training
            _check_scalars(tr, "training")
            tr.methods = _str_list(tr.methods, "training.methods")
            from ..train import models as train_models
            from ..train import presets

            try:
                train_models.canonical(tr.model)
            except SpatialProbeError:
                raise ConfigError(f"study spec: training.model {tr.model!r} is not a model; use one of "
                                  f"{', '.join(train_models.names())}.") from None
            fam = "jit" if tr.model.startswith("jit") else "sit"
            for m in tr.methods:
                try:
                    presets.get(m, fam)  # unknown names fail with the valid ones
                except ConfigError as exc:  # a method of the other family (pixelrepa is JiT only)
                    raise ConfigError(f"study spec: training.methods {m!r} with training.model {tr.model!r}: "
                                      f"{exc}") from None
            if "none" in tr.methods:
                raise ConfigError("study spec: training.methods lists 'none'; the no-alignment baseline is "
                                  "training.baseline: true (trained once, not per teacher).")
            tr.steps = _pos_int(tr.steps, "training.steps")
            tr.batch_size = _pos_int(tr.batch_size, "training.batch_size", allow_none=True)
            tr.seeds = _int_list(tr.seeds, "training.seeds")
            if tr.baseline_seeds is not None:
                tr.baseline_seeds = _int_list(tr.baseline_seeds, "training.baseline_seeds")
            tr.options = _options(tr.options, "training.options", TrainConfig, allow_none=False)
            _check_options_types(tr.options, TrainConfig, "training.options")
            if tr.recipe is not None:
                from ..train import recipes

                rec = recipes.get(tr.recipe)
                if "model" not in t:
                    tr.model = rec.train["model"]
                if (tr.model.startswith("jit") and "jit" or "sit") != rec.family:
                    raise ConfigError(f"study spec: training.recipe {rec.name!r} is a {rec.family} recipe but "
                                      f"training.model {tr.model!r} is not; pick a matching model or recipe.")
                tr.options = {**tr.options, "recipe": rec.name}
            clash = sorted(set(tr.options) & {"model", "method", "teacher", "images", "out", "steps", "seed",
                                              "batch_size", "resume", "device"})
            if clash:
                raise ConfigError(f"study spec: training.options.{clash[0]} is a training field of its own or "
                                  "is set by the study; move it up to training: or remove it.")
            tr.sample = _options(tr.sample, "training.sample", SampleConfig, allow_none=False)
            _check_options_types(tr.sample, SampleConfig, "training.sample")
            clash = sorted(set(tr.sample) & {"run", "out", "device"})
            if clash:
                raise ConfigError(f"study spec: training.sample.{clash[0]} is set by the study; remove it.")
            if tr.fid is not None and not isinstance(tr.fid, dict):
                raise ConfigError(f"study spec: training.fid must be a mapping, e.g. {{protocol: digits}}; "
                                  f"got {tr.fid!r}.")
            tr.fid = dict(tr.fid or {})
            proto = tr.fid.get("protocol", "digits")
            if proto not in FID_PROTOCOLS:
                raise ConfigError(f"study spec: training.fid.protocol {proto!r}: use 'digits' (the toy FD on "
                                  "scikit-learn digits) or 'adm' (gFID against an ADM reference .npz).")
            if proto == "adm" and not tr.fid.get("ref"):
                raise ConfigError("study spec: training.fid.ref is required with protocol adm "
                                  "(e.g. VIRTUAL_imagenet256_labeled.npz).")
    s.known_gfid = data.get("known_gfid")
    s.known_gfid_col = data.get("known_gfid_col", "gfid")
    if not isinstance(s.known_gfid_col, str):
        raise ConfigError(f"study spec: known_gfid_col must be a column name (a string); got {s.known_gfid_col!r}.")
    s.known_gfid_random_init = data.get("known_gfid_random_init", False)
    if s.known_gfid is not None and not isinstance(s.known_gfid, str):
        raise ConfigError(f"study spec: known_gfid must be a packaged reference name or a CSV path; "
                          f"got {s.known_gfid!r}.")
    if not isinstance(s.known_gfid_random_init, bool):
        raise ConfigError(f"study spec: known_gfid_random_init must be true or false (not quoted); "
                          f"got {s.known_gfid_random_init!r}.")
    if s.known_gfid is not None and s.training is not None:
        raise ConfigError("study spec: give either training (train and score runs) or known_gfid "
                          "(published gFIDs), not both.")
    if s.known_gfid is not None:
        from .. import reference

        if s.known_gfid not in reference.names() and not Path(s.known_gfid).is_file():
            raise InputFileError(f"study spec: known_gfid {s.known_gfid!r} is neither a packaged reference "
                                 f"({', '.join(reference.names())}) nor an existing CSV file.")
        # a zoo id names the pretrained encoder, whose published numbers the table holds; an encoder the spec
        # defines itself (define:) is the user's own id, numbers and all
        rand = [e.id for e in s.encoders if e.random_init and e.define is None]
        if rand and not s.known_gfid_random_init:
            raise ConfigError(f"study spec: {', '.join(rand)} {'has' if len(rand) == 1 else 'have'} random_init: "
                              f"true, but known_gfid {s.known_gfid!r} holds published numbers of the pretrained "
                              "encoder(s); joining them would label a random network with a trained one's gFID. "
                              "Drop random_init, or set known_gfid_random_init: true to join them anyway "
                              "(the rows are marked in results.csv and the report).")

    c = data.get("correlate", {}) or {}
    _check_keys(c, CorrelateSpec, "correlate")
    s.correlate = CorrelateSpec(**c)
    _check_scalars(s.correlate, "correlate", skip=("x", "y"))
    if not 0 < s.correlate.confidence < 1:
        raise ConfigError(f"study spec: correlate.confidence must lie in (0, 1), e.g. 0.95; "
                          f"got {s.correlate.confidence}.")
    s.correlate.x = _str_list(s.correlate.x, "correlate.x")
    if s.correlate.y is not None:
        s.correlate.y = _str_list(s.correlate.y, "correlate.y")
    if s.correlate.n_resamples < 1000:
        raise ConfigError(f"study spec: correlate.n_resamples {s.correlate.n_resamples} is too few; use >= 1000.")

    s.device = data.get("device", "auto")
    if not isinstance(s.device, str):
        raise ConfigError(f"study spec: device must be a string ({DEVICE_HELP}); got {s.device!r}.")
    check_device_name(s.device)
    s.threads = _pos_int(data.get("threads"), "threads", allow_none=True)
    s.weights_dir = data.get("weights_dir")
    if s.weights_dir is not None and not isinstance(s.weights_dir, str):
        raise ConfigError(f"study spec: weights_dir must be a folder path; got {s.weights_dir!r}.")
    s.launcher = data.get("launcher", "local")
    if s.launcher not in LAUNCHERS:
        raise ConfigError(f"study spec: launcher {s.launcher!r}: use one of {', '.join(LAUNCHERS)}.")
    ex = data.get("executor", {}) or {}
    _check_keys(ex, ExecutorSpec, "executor")
    s.executor = ExecutorSpec(**ex)
    _check_scalars(s.executor, "executor")
    if s.executor.cluster not in CLUSTERS:
        raise ConfigError(f"study spec: executor.cluster {s.executor.cluster!r}: use one of {', '.join(CLUSTERS)}.")
    if not isinstance(s.executor.gpus_per_node, int) or isinstance(s.executor.gpus_per_node, bool) \
            or s.executor.gpus_per_node < 0:
        raise ConfigError(f"study spec: executor.gpus_per_node must be 0 (no GPU request) or a positive integer; "
                          f"got {s.executor.gpus_per_node!r}.")
    _pos_int(s.executor.tasks_per_node, "executor.tasks_per_node", allow_none=True)
    _pos_int(s.executor.array_parallelism, "executor.array_parallelism")
    s.smoke = data.get("smoke") if not smoke else None
    if s.training is None and s.known_gfid is None:
        pass  # properties only, no y: the table is written, correlate is skipped
    return s


def _abs(v: Any) -> Any:
    """A relative path that exists, made absolute (other values as they are)."""
    if isinstance(v, str) and v and not v.startswith("builtin") and ":" not in v.split("/")[0] \
            and not Path(v).is_absolute() and Path(v).exists():
        return str(Path(v).resolve())
    return v


def absolute_paths(spec: StudySpec) -> StudySpec:
    """Every input path of ``spec`` that exists relative to the current folder, made absolute, so the
    resolved ``study.yaml``, the node settings and each stage's ``config.json`` name the same files from any
    folder (a cluster job, ``report`` run elsewhere). Returns ``spec`` (changed in place)."""
    def absolute_options(*option_dicts) -> None:
        for opts in option_dicts:
            for k in list(opts or {}):
                if k in PATH_KEYS:
                    opts[k] = _abs(opts[k])

    p = spec.properties
    p.images = _abs(p.images)
    absolute_options(p.metrics, p.probe, p.inject)
    if spec.training is not None:
        t = spec.training
        t.images = _abs(t.images)
        absolute_options(t.options, t.sample, t.fid)
    if spec.known_gfid is not None and Path(spec.known_gfid).is_file():
        spec.known_gfid = str(Path(spec.known_gfid).resolve())
    spec.weights_dir = _abs(spec.weights_dir)
    if spec.executor.folder:
        spec.executor.folder = str(Path(spec.executor.folder).resolve())
    return spec


def packaged_path(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath(f"{name}.yaml")))


def read_spec_data(spec: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a spec file or packaged name, and where it came from."""
    import yaml

    name = str(spec)
    if name in PACKAGED and not Path(name).exists():
        path = packaged_path(name)
    else:
        path = Path(name)
        if not path.is_file():
            raise InputFileError(f"Study spec {name!r} does not exist; give a study.yaml (see `spatialprobe "
                                 f"study init`) or a packaged spec: {', '.join(PACKAGED)}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Study spec {str(path)!r} could not be parsed: {exc}") from exc
    return data or {}, str(path)


def load_spec(spec: str | Path | dict | StudySpec, *, smoke: bool = False) -> StudySpec:
    """A :class:`StudySpec` from a file, a packaged name (``mini``), a mapping or a ready spec."""
    if isinstance(spec, StudySpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec, smoke=smoke)
    data, _ = read_spec_data(spec)
    return parse_spec(data, smoke=smoke)


TEMPLATE = """\
# spatialprobe study spec. Run it: spatialprobe study run study.yaml --out runs/my-study
# (--dry-run prints the plan and the missing weights first; `spatialprobe study status runs/my-study`).
name: my-study

# Teachers / encoders: zoo ids (spatialprobe ls encoders), aliases, or variants ID@transform=value,
# e.g. dinov2-vit-b@mix_cls=0.1 (the paper's injected teacher), hog@mix_mean=0.25, dinov2-vit-b@layer=8.
# A mapping adds options: family (label in the table), random_init (no checkpoint), seeds (training
# seeds of this teacher only), define (an encoders.yaml row registered at run time under this id).
encoders:
  - hog
  - sift
  - pixels
  - {id: hog@mix_mean=0.5, family: Classical}
  - {id: dino-vit-b, random_init: true, family: Baseline}

# Properties of each encoder, measured on one image set (extracted once per encoder).
properties:
  images: builtin:digits      # folder, ImageNet-style tree, list file, builtin[:digits|lfw]
  limit: null                 # only the first N images
  metrics: {}                 # MetricsConfig options (masks: DIR for SRSS, radii, sweep); null = skip
  probe: {}                   # ProbeConfig options (labels, val_labels, pool, ...); null = skip
  inject: null                # e.g. {alphas: [0, 0.1, 0.5]}; null = skip
  decode_cache: true          # decode + crop once into OUT/cache/images/ (uint8, 196 KB an image at 256 px)

# Training runs: every teacher x method x seed (+ the no-alignment baseline once per seed), each
# sampled and scored. Replace the whole section by `known_gfid: sit-xl-100k` (or a CSV with columns
# encoder,gfid) for a properties-only study that correlates against published gFIDs.
training:
  model: jit-tiny             # spatialprobe train --help lists the models
  methods: [repa, irepa, pixelrepa]  # pixelrepa: JiT models only (drop it for a sit-* model)
  baseline: true
  steps: 80
  batch_size: 16
  seeds: [0]
  images: builtin:digits
  options: {hflip: false}     # further `spatialprobe train` options
  sample: {n: 256, steps: 20} # `spatialprobe sample` options
  fid: {protocol: digits}     # digits: toy FD on a digits CNN (fd_digits); adm: {protocol: adm, ref: X.npz, inception_weights: ...}

correlate:
  x: [lp_acc, lds, cds, srss, rmsc]
  y: null                     # default: <quality>_<method> per method and <quality>_repa_minus_<m> (irepa, pixelrepa)
  family_col: family
  n_resamples: 10000

device: auto                  # auto | cpu | cuda
threads: null                 # torch CPU threads (null = torch's default; 1 on a shared CPU machine)
weights_dir: null             # else $SPATIALPROBE_WEIGHTS, the HF and torch hub caches

# Where nodes run: local (this process, in order) or submitit (one job per extraction and per
# training run; SLURM on a cluster, `cluster: local` for processes on this machine).
launcher: local
executor:
  cluster: slurm
  partition: null             # null: the cluster's default partition
  extract_partition: null     # extraction jobs elsewhere (e.g. a CPU partition); null: partition
  gpus_per_node: 1            # > 1: each training job runs DDP over this many ranks; 0: no GPU request (CPU nodes)
  tasks_per_node: null        # DDP ranks per training job (null: gpus_per_node, at least 1)
  timeout_min: 240
  mem_gb: 64
  array_parallelism: 32
"""
