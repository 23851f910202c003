"""Consistency of the deploy files with each other and with the code, run by .ci/deploy-checks.

Usage: check_deploy.py RENDERED_BASE_YAML   (the output of `kustomize build deploy/kubernetes`,
or "-" when no kustomize could be installed: the checks that need it are then skipped)

- deploy/kubernetes/prometheusrule.yaml carries exactly the groups of deploy/prometheus/rules.yaml
  (and so does the rendered base);
- every rule has a `summary` and a `runbook` annotation;
- every roster_sync_* metric the rules name is registered somewhere in src/ (a histogram's
  _bucket/_sum/_count series by its base name);
- the image tag of the kustomize base is the crate's version in Cargo.toml.
Prints one line per failure and exits 1 if there was any.
"""

import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
failures = []


def fail(message):
    failures.append(message)
    print(f"check_deploy: {message}")


rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yaml").read_text())
operator = yaml.safe_load((ROOT / "deploy/kubernetes/prometheusrule.yaml").read_text())
if operator.get("kind") != "PrometheusRule" or operator.get("spec") != rules:
    fail("deploy/kubernetes/prometheusrule.yaml's spec differs from deploy/prometheus/rules.yaml")

names = set()
for group in rules["groups"]:
    for rule in group["rules"]:
        annotations = rule.get("annotations", {})
        for key in ("summary", "runbook"):
            if not annotations.get(key):
                fail(f"rule {rule.get('alert')} has no {key} annotation")
        names.update(re.findall(r"\broster_sync_[a-z0-9_]+", rule["expr"]))

sources = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
for name in sorted(names):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if f'"{name}"' not in sources and f'"{base}"' not in sources:
        fail(f"deploy/prometheus/rules.yaml names {name}, which no code in src/ registers")
print(f"check_deploy: the rules use {', '.join(sorted(names))}")

version = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
tags = [i.get("newTag") for i in kustomization.get("images", []) if i.get("name") == "roster-sync"]
if tags != [version]:
    fail(f"deploy/kubernetes/kustomization.yaml tags the image {tags}, Cargo.toml says {version}")

rendered_path = sys.argv[1] if len(sys.argv) > 1 else "-"
if rendered_path != "-":
    objects = [o for o in yaml.safe_load_all(pathlib.Path(rendered_path).read_text()) if o]
    rendered = [o for o in objects if o["kind"] == "PrometheusRule"]
    if len(rendered) != 1 or rendered[0]["spec"] != rules:
        fail("the rendered base's PrometheusRule differs from deploy/prometheus/rules.yaml")
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        pod = o["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            if not c["image"].endswith(f":{version}"):
                fail(f"container {c['name']} runs {c['image']}, not version {version}")

sys.exit(1 if failures else 0)
