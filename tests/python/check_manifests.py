#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests, for tests/manifests.rs.

    check_manifests.py kube FILE...         kubernetes-validate (strict) against
                                            Kubernetes 1.33's schemas
    check_manifests.py crd CRD OBJECT...    each object against the CRD's
                                            openAPIV3Schema (jsonschema)

Prints one JSON document: {"FILE or FILE#n": "ok" | "error text", ...}.
"""
import json
import sys

import jsonschema
import yaml

KUBERNETES_VERSION = "1.33.0"


def kube(files):
    import kubernetes_validate

    results = {}
    for path in files:
        with open(path) as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None:
                    continue
                where = f"{path}#{index + 1}"
                try:
                    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                    results[where] = "ok"
                except kubernetes_validate.ValidationError as e:
                    results[where] = f"{e.message} at {'.'.join(map(str, e.path))}"
                except Exception as e:  # noqa: BLE001 - report, don't crash
                    results[where] = f"{type(e).__name__}: {e}"
    return results


def crd(crd_path, files):
    with open(crd_path) as f:
        definition = yaml.safe_load(f)
    schema = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema)
    results = {}
    for path in files:
        with open(path) as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None or doc.get("kind") != definition["spec"]["names"]["kind"]:
                    continue
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                results[f"{path}#{index + 1}"] = (
                    "ok"
                    if not errors
                    else "; ".join(
                        f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
                    )
                )
    return results


def main():
    mode, *args = sys.argv[1:]
    result = kube(args) if mode == "kube" else crd(args[0], args[1:])
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
