"""Deployment files agree with the code: manifests, image, runtime env and the schema doc.

Static checks only (no cluster, no Docker): every YAML under infra/ parses and has the
fields its kind needs, the refresh entrypoints parse with the job's own argparse and fit
the cluster bounds, image and Ray versions match pyproject.toml, nothing secret-looking is
checked in, and docs/table-schema.md covers every column, status and report field.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from pipeline import schema

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "Dockerfile"
RUNTIME_ENV = INFRA / "runtime_env.yaml"
REQUIREMENTS = INFRA / "requirements-gpu.txt"
SCHEMA_DOC = ROOT / "docs" / "table-schema.md"
JOB_SCRIPT = "jobs/embed_catalog.py"


# ---- helpers ------------------------------------------------------------------------------
def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def _docs(path: Path) -> list[dict]:
    """The non-empty documents of a YAML file (parsed once; callers only read them)."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _k8s_objects() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _one(kind: str) -> dict:
    found = [d for d in _k8s_objects() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in infra/k8s, found {len(found)}"
    return found[0]


def _containers(node) -> Iterator[dict]:
    """Every container spec anywhere below `node` (pod templates nest differently per kind)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _cpus(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _pyproject_requirement(name: str) -> Requirement:
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        if req.name == name:
            return req
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


@pytest.fixture(scope="module")
def ray_version() -> str:
    """The Ray release every image must carry: installed here and inside pyproject's range."""
    installed = importlib.metadata.version("ray")
    assert _pyproject_requirement("ray").specifier.contains(installed), installed
    return installed


@pytest.fixture(scope="module")
def job():
    """The real job module (imports the pipeline: torch, Ray, LanceDB; shared with the suite)."""
    import jobs.embed_catalog

    return jobs.embed_catalog


def _job_argv(command: list[str]) -> list[str]:
    """The arguments after `python jobs/embed_catalog.py` in an entrypoint."""
    idx = [i for i, tok in enumerate(command) if tok.endswith(JOB_SCRIPT)]
    assert len(idx) == 1, f"entrypoint does not run {JOB_SCRIPT} exactly once: {command}"
    assert idx[0] >= 1 and Path(command[idx[0] - 1]).name.startswith("python"), command
    return command[idx[0] + 1 :]


def _entrypoints() -> dict[str, list[str]]:
    rayjob = _one("RayJob")
    cron = _one("CronJob")
    (submit,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return {
        "RayJob": _job_argv(shlex.split(rayjob["spec"]["entrypoint"])),
        "CronJob": _job_argv(submit["args"]),
    }


_CRON_FIELDS = (  # (low, high, names) per field: minute, hour, day of month, month, weekday
    (0, 59, None),
    (0, 23, None),
    (1, 31, None),
    (1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]),
    (0, 7, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
)
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def _valid_cron(expr: str) -> bool:
    """Standard 5-field cron syntax as Kubernetes CronJob accepts it (plus its macros)."""
    if expr.strip() in _CRON_MACROS:
        return True
    fields = expr.split()
    if len(fields) != 5:
        return False

    def value(text: str, low: int, high: int, names: list[str] | None) -> int | None:
        if names and text.lower() in names:
            return names.index(text.lower()) + (1 if low == 1 else 0)
        return int(text) if text.isdigit() and low <= int(text) <= high else None

    for field, (low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in field.split(","):
            rng, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                return False
            if rng in ("*", "?"):
                continue
            lo, _, hi = rng.partition("-")
            a = value(lo, low, high, names)
            b = value(hi, low, high, names) if hi else a
            if a is None or b is None or a > b:
                return False
    return True


# ---- every manifest ---------------------------------------------------------------------
def test_every_yaml_parses_and_names_its_kind():
    files = _yaml_files()
    assert {p.name for p in files} >= {
        "runtime_env.yaml",
        "raycluster.yaml",
        "rayjob-refresh.yaml",
        "cronjob-nightly.yaml",
        "serviceaccount.yaml",
        "kustomization.yaml",
    }
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        if path.parent != K8S:
            continue
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} has no name"


def test_kustomization_lists_the_standing_resources_only():
    kust = _docs(K8S / "kustomization.yaml")[0]
    for name in kust["resources"]:
        assert (K8S / name).is_file(), name
    assert "rayjob-refresh.yaml" not in kust["resources"]  # applying it would start a run


def test_container_env_and_ray_start_params_are_strings():
    """Kubernetes rejects non-string env values; KubeRay's rayStartParams is map[string]string."""
    for doc in _k8s_objects():
        for c in _containers(doc):
            for env in c.get("env", []):
                assert isinstance(env.get("value", ""), str), (c["name"], env)
            assert all(isinstance(a, str) for a in c.get("args", []) + c.get("command", []))
    cluster = _one("RayCluster")["spec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())


# ---- RayCluster ---------------------------------------------------------------------------
def test_raycluster_groups_and_autoscaling(ray_version):
    spec = _one("RayCluster")["spec"]
    assert spec["rayVersion"] == ray_version
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "no actors on the head"
    assert head["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert len(groups) == len(spec["workerGroupSpecs"]) >= 2
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], name
        assert g["maxReplicas"] >= 1, name
        assert g["template"]["spec"]["containers"], name


def test_images_are_pinned_equal_and_carry_the_ray_version(ray_version):
    images = [c["image"] for doc in _k8s_objects() for c in _containers(doc)]
    assert images
    assert len(set(images)) == 1, f"head, workers and the CronJob must share one image: {images}"
    image = images[0]
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag and tag and tag != "latest", image
    assert re.search(rf"(^|-)ray{re.escape(ray_version)}(-|$)", tag), (image, ray_version)


def _gpu_group() -> dict:
    spec = _one("RayCluster")["spec"]
    gpu = [
        g
        for g in spec["workerGroupSpecs"]
        if any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in _containers(g))
    ]
    assert len(gpu) == 1, "expected exactly one GPU worker group"
    return gpu[0]


def _pod_resources(group: dict) -> tuple[float, float]:
    (c,) = group["template"]["spec"]["containers"]
    limits = c["resources"]["limits"]
    assert c["resources"]["requests"] == limits, f"{group['groupName']}: requests != limits"
    cpus = float(group["rayStartParams"].get("num-cpus", _cpus(limits["cpu"])))
    return cpus, float(limits.get("nvidia.com/gpu", 0))


def test_gpu_group_requests_gpus_and_tolerates_the_taint():
    group = _gpu_group()
    assert _pod_resources(group)[1] >= 1
    pod = group["template"]["spec"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    for g in _one("RayCluster")["spec"]["workerGroupSpecs"]:
        if g["groupName"] != group["groupName"]:
            assert _pod_resources(g)[1] == 0, f"{g['groupName']} should not hold GPUs"


# ---- refresh entrypoints ------------------------------------------------------------------
def test_entrypoints_parse_with_the_job_argparse_and_agree(job):
    argvs = _entrypoints()
    parsed = {kind: job.parse_args(argv) for kind, argv in argvs.items()}
    assert parsed["RayJob"] == parsed["CronJob"], "manual and nightly runs must be the same run"
    args = parsed["CronJob"]
    assert args.mode == "incremental"
    assert args.manifest.startswith("s3://") and args.db.startswith("s3://")
    assert args.checkpoint.startswith("s3://") and args.checkpoint.endswith(".pt")
    assert args.model == "internvideo2-1b"


def test_entrypoint_fits_the_cluster_and_the_resource_config(job):
    """The job sizes itself from the cluster at start-up, when an autoscaled cluster has no
    workers yet; the entrypoint must therefore pin GPUs and pool sizes, within the bounds."""
    args = job.parse_args(_entrypoints()["CronJob"])
    res = job.build_config(args, has_gpu=False).resources  # what a cold cluster gives
    assert res.embed_gpus >= 1, "--gpus-per-actor must be explicit: the encoder would run on CPU"
    assert res.decode_actors is not None, "--decode-actors must be explicit"
    gpu_group = _gpu_group()
    gpu_pod_cpus, gpus_per_pod = _pod_resources(gpu_group)
    assert gpus_per_pod >= res.embed_gpus
    actors_per_gpu_pod = int(gpus_per_pod // res.embed_gpus)
    assert gpu_pod_cpus >= actors_per_gpu_pod * res.embed_cpus, "GPU pod lacks embed CPUs"
    assert res.embed_actors <= gpu_group["maxReplicas"] * actors_per_gpu_pod
    groups = _one("RayCluster")["spec"]["workerGroupSpecs"]
    max_cpus = sum(g["maxReplicas"] * _pod_resources(g)[0] for g in groups)
    need = res.decode_actors * res.decode_cpus + res.embed_actors * res.embed_cpus
    assert need <= max_cpus, f"{need} CPUs requested, the cluster tops out at {max_cpus}"


def test_rayjob_targets_the_standing_cluster():
    cluster = _one("RayCluster")
    rayjob = _one("RayJob")["spec"]
    assert rayjob["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert rayjob["metadata"]["app"] == "vidcat-refresh"  # what nightly_refresh.sh looks for
    assert rayjob["submitterConfig"]["backoffLimit"] == 0


def test_cronjob_schedule_and_concurrency():
    cron = _one("CronJob")
    spec = cron["spec"]
    assert _valid_cron(spec["schedule"]), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec.get("timeZone") in ("Etc/UTC", "UTC")
    job_spec = spec["jobTemplate"]["spec"]
    assert job_spec["backoffLimit"] == 0
    assert 0 < job_spec["activeDeadlineSeconds"] < 24 * 3600, "a run must not block the next"
    pod = job_spec["template"]["spec"]
    (submit,) = pod["containers"]
    assert submit["command"][-1] == "infra/nightly_refresh.sh"
    head = f"{_one('RayCluster')['metadata']['name']}-head-svc"
    assert any(e["name"] == "RAY_ADDRESS" and head in e["value"] for e in submit["env"])


def test_ray_token_auth_is_on_and_the_submitter_has_the_token():
    """The job API runs arbitrary code with the cluster's IAM role: it must require a token."""
    auth = _one("RayCluster")["spec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    (submit,) = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in submit["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": auth["secretName"], "key": "auth_token"}


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ("0 2 * * *", True),
        ("*/15 0-6,22-23 1-31 jan-dec mon-fri", True),
        ("@daily", True),
        ("0 24 * * *", False),
        ("0 2 * *", False),
        ("60 2 * * *", False),
        ("0 2 * * 8", False),
        ("0 5-2 * * *", False),
        ("*/0 2 * * *", False),
        ("0 2 * foo *", False),
    ],
)
def test_cron_validator(expr, ok):
    assert _valid_cron(expr) is ok


def test_nightly_script_is_valid_bash():
    script = INFRA / "nightly_refresh.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "vidcat-refresh" in text and "runtime_env.yaml" in text and "ray job stop" in text


# ---- ServiceAccount and secrets -----------------------------------------------------------
def test_ray_pods_use_the_irsa_service_account():
    accounts = {d["metadata"]["name"]: d for d in _k8s_objects() if d["kind"] == "ServiceAccount"}
    role = accounts["vidcat"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role), role
    spec = _one("RayCluster")["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    assert all(t["spec"]["serviceAccountName"] == "vidcat" for t in templates)


_SECRET_NAMES = re.compile(
    r"AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|aws_secret|BEGIN [A-Z ]*PRIVATE KEY"
    r"|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}",
    re.IGNORECASE,
)
_SECRET_KEY = re.compile(
    r"(?i:secret|passw|credential|api[_-]?key|(^|[_-])tokens?($|[_-]))|[a-z]Token$"
)


def _secret_like_values(node, path: str = "") -> Iterator[str]:
    """Mapping keys (or env names) that look secret and carry a literal string value.

    References to a secret (`secretName`, `secretKeyRef`, `valueFrom`) are fine.
    """
    if isinstance(node, dict):
        name = node.get("name") if isinstance(node.get("name"), str) else None
        if name and _SECRET_KEY.search(name) and isinstance(node.get("value"), str):
            yield f"{path}/{name}"
        for key, value in node.items():
            reference = re.search(r"(Name|Ref)$", str(key))
            if _SECRET_KEY.search(str(key)) and not reference and isinstance(value, str) and value:
                yield f"{path}/{key}"
            yield from _secret_like_values(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _secret_like_values(item, f"{path}[{i}]")


def test_no_secrets_anywhere_in_infra():
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text()
        assert not _SECRET_NAMES.search(text), f"{path}: {_SECRET_NAMES.search(text).group()}"
        if path.suffix in (".yaml", ".yml"):
            for doc in _docs(path):
                assert not list(_secret_like_values(doc)), (path, list(_secret_like_values(doc)))
    env = yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]
    assert not [k for k in env if _SECRET_KEY.search(k) or k.startswith("AWS_")]


@pytest.mark.parametrize(
    ("doc", "hit"),
    [
        ({"env": [{"name": "DB_PASSWORD", "value": "x"}]}, True),
        ({"stringData": {"api_key": "x"}}, True),
        ({"env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {}}}]}, False),
        ({"automountServiceAccountToken": False}, False),
        ({"env": [{"name": "TOKENIZERS_PARALLELISM", "value": "false"}]}, False),
        ({"env": [{"name": "GITHUB_TOKEN", "value": "x"}]}, True),
        ({"authToken": "x"}, True),
        ({"authOptions": {"mode": "token", "secretName": "x"}}, False),
    ],
)
def test_secret_detector(doc, hit):
    assert bool(list(_secret_like_values(doc))) is hit


# ---- runtime env --------------------------------------------------------------------------
def test_runtime_env_parses_and_matches_the_rayjob():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    RuntimeEnv(**env)  # Ray's own validation
    assert set(env) <= {"env_vars", "excludes", "working_dir", "py_modules", "config"}
    env_vars = env["env_vars"]
    assert all(isinstance(v, str) for v in env_vars.values())
    assert env_vars["HF_HUB_OFFLINE"] == "1"
    assert {".venv", "demo_out", "benchmarks/results", ".git"} <= set(env["excludes"])
    rayjob_env = yaml.safe_load(_one("RayJob")["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**rayjob_env)
    assert rayjob_env["env_vars"] == env_vars


# ---- image ----------------------------------------------------------------------------------
def _dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=\"?([^\"\s]*)\"?\s*$", text, re.MULTILINE))


def test_dockerfile_pins_ray_and_installs_the_project(ray_version):
    text = DOCKERFILE.read_text()
    args = _dockerfile_args(text)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], b)
        for b in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    ]
    final = bases[-1]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py311-cu\d+", final), final
    assert "latest" not in " ".join(bases)
    assert f'io.ray.version="{ray_version}"' in text
    assert f"ray.__version__ == '{ray_version}'" in text  # checked at build time too
    assert re.search(r"pip install -r /tmp/requirements-gpu\.txt", text)
    assert re.search(r"pip wheel .*--no-deps", text) and "pip install --no-deps /tmp/dist/" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must run as non-root"
    assert re.search(r"HF_HUB_OFFLINE=1", text) and re.search(r"VIDCAT_CACHE=\S+", text)
    assert not re.search(r"^(ENV|ARG)\s+AWS_", text, re.MULTILINE)
    assert args.get("BAKE_CHECKPOINT", "") == "", "weights are baked only on request"
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "**/*.pt", "demo_out", "benchmarks/results"} <= set(ignore)


def test_gpu_requirements_are_exact_and_inside_pyproject_ranges(ray_version):
    pins: dict[str, Requirement] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"not an exact pin: {line}"
        assert req.name.lower() not in pins, f"duplicate pin: {req.name}"
        pins[req.name.lower()] = req
    for dep in _pyproject()["project"]["dependencies"]:
        want = Requirement(dep)
        pin = pins.get(want.name.lower())
        assert pin is not None, f"{want.name} is not pinned in {REQUIREMENTS.name}"
        version = Version(next(iter(pin.specifier)).version)
        assert want.specifier.contains(version), f"{pin} is outside pyproject's {want}"
        assert want.extras <= pin.extras, f"{pin} lacks extras {want.extras}"
    assert str(next(iter(pins["ray"].specifier)).version) == ray_version


# ---- the data contract doc ------------------------------------------------------------------
def _report_keys() -> set[str]:
    """Every field of the run report: `RunReport.to_dict()`'s keys (pipeline/runs.py), the
    `Counts` fields, and the keys of the dicts pipeline/runner.py builds into the report."""
    import dataclasses

    from pipeline.runs import Counts

    keys = {f.name for f in dataclasses.fields(Counts)} | {"videos_embedded"}
    runs_tree = ast.parse((ROOT / "pipeline" / "runs.py").read_text())
    (to_dict,) = [
        f
        for cls in ast.walk(runs_tree)
        if isinstance(cls, ast.ClassDef) and cls.name == "RunReport"
        for f in cls.body
        if isinstance(f, ast.FunctionDef) and f.name == "to_dict"
    ]
    runner_tree = ast.parse((ROOT / "pipeline" / "runner.py").read_text())
    built = [
        node
        for node in ast.walk(runner_tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RunReport"
    ]
    assert built, "pipeline/runner.py no longer builds a RunReport"
    for tree in (to_dict, *built):
        keys |= {
            k.value
            for d in ast.walk(tree)
            if isinstance(d, ast.Dict)
            for k in d.keys
            if isinstance(k, ast.Constant) and isinstance(k.value, str)
        }
    keys |= {"report_uri"}
    assert {"run_id", "counts", "exit_code", "wall", "files"} <= keys
    return keys


def _doc_columns(doc: str, builder: str) -> list[tuple[str, str, bool]]:
    """`(name, arrow type, nullable)` rows of the doc section built by `schema.<builder>()`."""
    sections = re.split(r"^## ", doc, flags=re.MULTILINE)
    (section,) = [s for s in sections if f"`schema.{builder}()`" in s]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (yes|no) \|", section, re.MULTILINE)
    return [(name, arrow_type, nullable == "yes") for name, arrow_type, nullable in rows]


def test_schema_doc_lists_every_column():
    """Every column of every table, in order, with its exact Arrow type and nullability."""
    doc = SCHEMA_DOC.read_text()
    builders = [n for n in dir(schema) if n.endswith("_schema") and callable(getattr(schema, n))]
    assert len(builders) == 5
    for builder in builders:
        want = [(f.name, str(f.type), f.nullable) for f in getattr(schema, builder)()]
        assert _doc_columns(doc, builder) == want, f"{SCHEMA_DOC.name}: {builder}() differs"
    assert schema.SCHEMA_VERSION_KEY.decode() in doc
    assert f'`"{schema.SCHEMA_VERSION}"`' in doc, "the current schema version is not stated"
    assert str(schema.EMBED_DIM) in doc


def test_schema_doc_lists_statuses_report_fields_and_exit_codes():
    from pipeline import runs

    doc = SCHEMA_DOC.read_text()
    for status in schema.Status:
        assert f"`{status.value}`" in doc, f"status {status.value} is missing"
    retry_line = next(line for line in doc.splitlines() if "RETRYABLE" in line)
    assert {s.value for s in schema.RETRYABLE} == set(re.findall(r"`(\w+)`", retry_line)) - {
        "RETRYABLE"
    }
    for key in _report_keys():
        assert f"`{key}`" in doc, f"run-report field {key} is missing"
    codes = [name for name in dir(runs) if name.startswith("EXIT_")]
    assert len(codes) == 6
    for name in codes:
        assert f"| {getattr(runs, name)} | `{name}` |" in doc, name
    assert "_vidcat/<table>/runs/<run_id>.report.json" in doc
