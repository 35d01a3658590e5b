"""Checks for the values a Kubernetes job is rendered with: names, labels, tolerations, quantities.

Each ``check_*`` returns the value (converted where a profile gives a list for a tuple) or
raises ``FieldError`` naming the field and what is allowed, in one line. The rules are the
API server's own (apimachinery's name, label and quantity validation), so a value that passes
here is not refused later for its syntax, and nothing that could bend the YAML gets through
unescaped: every value is still rendered with the YAML dumper.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from launcher.checks import shown
from launcher.errors import FieldError

_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(_DNS1123_LABEL)
DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*")
DNS1035_LABEL = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DATA_KEY = re.compile(r"[-._A-Za-z0-9]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUANTITY = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")
# An OCI image reference as container runtimes parse it: [registry[:port]/]path[:tag][@digest].
_DOMAIN = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?))*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                   r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?")

CLEAN_POD_POLICIES = ("Running", "All", "None")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
TOLERATION_OPERATORS = ("Equal", "Exists")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
ANNOTATIONS_MAX_BYTES = 256 * 1024  # the API server's limit on all annotations of one object
# Environment variables the operators set for torchrun (PyTorchJob: MASTER_*, WORLD_SIZE, RANK,
# PET_*; TrainJob: PET_*) or torchrun sets for its workers: a job must not set them itself.
RESERVED_ENV = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "NODE_RANK", "PYTHONUNBUFFERED"}
RESERVED_ENV_PREFIXES = ("PET_", "TORCHELASTIC_")


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {shown(value)}")
    return value


def check_dns1123_label(name: str, value: Any) -> str:
    """A namespace name: lower-case letters, digits and '-', at most 63."""
    value = _string(name, value)
    if len(value) > 63 or not DNS1123_LABEL.fullmatch(value):
        raise FieldError(name, "must be at most 63 lower-case letters, digits or '-', starting and ending with a "
                               f"letter or digit (a DNS-1123 label), got {shown(value)}")
    return value


def check_dns1123_subdomain(name: str, value: Any, max_length: int = 253) -> str:
    """An object name (PVC, Secret, ServiceAccount, PriorityClass ...): DNS-1123 subdomain."""
    value = _string(name, value)
    if len(value) > max_length or not DNS1123_SUBDOMAIN.fullmatch(value):
        raise FieldError(name, f"must be at most {max_length} lower-case letters, digits, '-' or '.', starting and "
                               f"ending with a letter or digit (a DNS-1123 name), got {shown(value)}")
    return value


def check_job_name(name: str, value: Any, max_length: int) -> str:
    value = _string(name, value)
    if len(value) > max_length or not DNS1035_LABEL.fullmatch(value):
        raise FieldError(name, f"must be at most {max_length} lower-case letters, digits or '-', starting with a "
                               f"letter and ending with a letter or digit (a DNS-1035 label), got {shown(value)}")
    return value


def dns1035(text: str, max_length: int) -> str:
    """``text`` made into a DNS-1035 label of at most ``max_length`` characters ("" if nothing is left).

    Accents are dropped (é -> e), anything else outside [a-z0-9] becomes '-', runs of '-' collapse,
    and the result starts with a letter and ends with a letter or digit.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    dashed = re.sub(r"[^a-z0-9]+", "-", ascii_text)
    dashed = re.sub(r"^[^a-z]+", "", dashed)
    return dashed[:max_length].rstrip("-")


def check_qualified_name(name: str, value: Any) -> str:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS-1123 subdomain, name up to 63."""
    value = _string(name, value)
    prefix, slash, local = value.rpartition("/")
    ok = bool(_LABEL_NAME.fullmatch(local)) and len(local) <= 63
    if slash:
        ok = ok and len(prefix) <= 253 and bool(DNS1123_SUBDOMAIN.fullmatch(prefix))
    if not ok:
        raise FieldError(name, "keys must be [PREFIX/]NAME: NAME up to 63 letters, digits, '-', '_' or '.' "
                               "starting and ending with a letter or digit, PREFIX a DNS-1123 name, "
                               f"got {shown(value)}")
    return value


def check_label_value(name: str, value: Any) -> str:
    value = _string(name, value)
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise FieldError(name, "values must be empty or up to 63 letters, digits, '-', '_' or '.' starting and "
                               f"ending with a letter or digit, got {shown(value)}")
    return value


def _mapping(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise FieldError(name, f"expected a mapping of KEY: value, got {shown(value)}")
    return value


def check_labels(name: str, value: Any) -> dict[str, str]:
    """Labels or a node selector: qualified-name keys, label-syntax values."""
    labels = _mapping(name, value)
    for key, item in labels.items():
        check_qualified_name(name, key)
        check_label_value(f"{name}.{key}", item)
    return dict(labels)


def check_annotations(name: str, value: Any) -> dict[str, str]:
    """Annotations: qualified-name keys, any string values (rendered escaped), 256 KiB in all."""
    annotations = _mapping(name, value)
    size = 0
    for key, item in annotations.items():
        check_qualified_name(name, key)
        item = _string(f"{name}.{key}", item)
        if "\0" in item:
            raise FieldError(f"{name}.{key}", "must not contain a NUL character")
        size += len(key.encode()) + len(item.encode("utf-8", "surrogatepass"))
    if size > ANNOTATIONS_MAX_BYTES:
        raise FieldError(name, f"all annotations together must be at most 256 KiB, got {size} bytes")
    return dict(annotations)


def check_toleration(name: str, value: Any) -> dict[str, Any]:
    toleration = _mapping(name, value)
    unknown = [k for k in toleration if k not in TOLERATION_KEYS]
    if unknown:
        raise FieldError(name, f"unknown key {shown(unknown[0])} (known: {', '.join(TOLERATION_KEYS)})")
    operator = toleration.get("operator", "Equal")
    if operator not in TOLERATION_OPERATORS:
        raise FieldError(name, f"operator must be Equal or Exists, got {shown(operator)}")
    if "key" in toleration:
        check_qualified_name(f"{name}.key", toleration["key"])
    elif operator != "Exists":
        raise FieldError(name, "a toleration without a key must have operator: Exists (it then tolerates every taint)")
    if "value" in toleration:
        if operator == "Exists" and toleration["value"] != "":
            raise FieldError(name, "a toleration with operator: Exists takes no value")
        check_label_value(f"{name}.value", toleration["value"])
    effect = toleration.get("effect")
    if effect is not None and effect not in TOLERATION_EFFECTS:
        raise FieldError(name, f"effect must be one of {', '.join(TOLERATION_EFFECTS)}, got {shown(effect)}")
    if "tolerationSeconds" in toleration:
        seconds = toleration["tolerationSeconds"]
        if effect != "NoExecute":
            raise FieldError(name, "tolerationSeconds is only allowed with effect: NoExecute")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 <= seconds <= 2**62:
            raise FieldError(name, f"tolerationSeconds must be a whole number of seconds, got {shown(seconds)}")
    return dict(toleration)


def check_tolerations(name: str, value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)):
        raise FieldError(name, f"expected a list of tolerations ({{key, operator, value, effect}}), got {shown(value)}")
    return tuple(check_toleration(name, item) for item in value)


def check_image(name: str, value: Any) -> str:
    value = _string(name, value)
    if len(value) > 500 or not IMAGE.fullmatch(value):
        raise FieldError(name, "must be a container image reference such as ghcr.io/org/name:tag (at most 500 "
                               f"characters), got {shown(value)}")
    return value


def check_quantity(name: str, value: Any) -> str:
    """A resource quantity such as 64Gi or 500M (positive)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = _string(name, value)
    if not _QUANTITY.fullmatch(value) or not re.search(r"[1-9]", value):
        raise FieldError(name, f"must be a positive quantity such as 64Gi, 512Mi or 100G, got {shown(value)}")
    return value


def secret_ref(value: str, default_key: str) -> tuple[str, str]:
    """``SECRET[:KEY]`` as (the Secret's name, the key holding the value: ``default_key`` if not given)."""
    secret, _, key = value.partition(":")
    return secret, key or default_key


def check_secret_ref(name: str, value: Any, default_key: str) -> tuple[str, str]:
    """``SECRET[:KEY]``: a Secret's name and the key holding the value (default ``default_key``)."""
    secret, key = secret_ref(_string(name, value), default_key)
    check_dns1123_subdomain(name, secret)
    if len(key) > 253 or not _DATA_KEY.fullmatch(key) or key in (".", ".."):
        raise FieldError(name, "the key after ':' must be letters, digits, '-', '_' or '.', got " + shown(key))
    return secret, key


def check_env_name(name: str, value: Any) -> str:
    value = _string(name, value)
    if not _ENV_NAME.fullmatch(value):
        raise FieldError(name, f"{shown(value)} is not a valid environment variable name")
    if value in RESERVED_ENV or value.startswith(RESERVED_ENV_PREFIXES):
        raise FieldError(name, f"{value} is set by the training operator or torchrun for each process; "
                               "a job must not set it")
    return value


def check_secret_env(name: str, value: Any) -> dict[str, str]:
    """``{ENV_NAME: SECRET[:KEY]}``: env vars the pods read from Secrets (the key defaults to ENV_NAME)."""
    mapping = _mapping(name, value)
    for env_name, ref in mapping.items():
        check_env_name(name, env_name)
        check_secret_ref(f"{name}.{env_name}", ref, env_name)
    return dict(mapping)


def check_k8s_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """The job's plain env vars, on top of checks.check_env: none the operator or torchrun sets."""
    for key in env:
        check_env_name(name, key)
    return env
