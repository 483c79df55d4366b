"""The deployment files agree with the code: what scripts/check-infra runs after the linters.

The linters know Docker, Compose, Kubernetes, CloudFormation and Prometheus; they do not know
strangler. This checks what they cannot, against the binaries themselves (their --help) and the
proxy's source:

- every flag passed to a binary exists on that binary, and flag values it enumerates are valid;
- every backend listens on its documented port, on all interfaces (inside a container);
- every routes.toml shipped here passes `strangler-proxy check`, points each service at the
  port its binary listens on, and keeps the proxy's ports where the health checks, scrapers and
  --api-base expect them;
- every strangler_* metric named in a rule, dashboard or document exists in metrics.rs;
- routes.toml reaches the proxy as a directory (compose bind mount, ConfigMap volume without
  subPath), so rename-saves and ConfigMap swaps are seen;
- the kustomization lists exactly the manifests beside it;
- every dashboard expression is valid PromQL (written out for `promtool check rules`).

Usage: consistency.py TREE --repo REPO --bin-dir DIR --work DIR --compose BIN
Prints one line per finding and exits 1 if there is any. Writes into --work the files the
shell script then hands to other tools: routes/** (for `strangler-proxy check`),
dashboard-rules/*.yml (for `promtool check rules`) and snippets/*.sh (for shellcheck).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cfnlint.decode import cfn_yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

BACKENDS = {  # routes.toml service name -> binary
    "monolith": "monolith",
    "users": "users-service",
    "threads": "threads-service",
    "posts": "posts-service",
}
BINARIES = [*BACKENDS.values(), "strangler-proxy"]

findings: list[str] = []


def finding(where: str, message: str) -> None:
    findings.append(f"{where}: {message}")


# -- What the binaries accept, from their own --help --------------------------------------------


class Binary:
    """Flags, enumerated values and default listen port of one binary, read from --help."""

    def __init__(self, name: str, help_text: str):
        self.name = name
        self.flags: set[str] = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))
        self.values: dict[str, list[str]] = {}
        for line in help_text.splitlines():
            m = re.search(r"(--[a-z][a-z0-9-]*) <\w+>.*\[possible values: ([^\]]+)\]", line)
            if m:
                self.values[m.group(1)] = [v.strip() for v in m.group(2).split(",")]
        m = re.search(r"--listen <\w+>.*\[default: [^\]:]+:(\d+)\]", help_text)
        self.port = int(m.group(1)) if m else None
        self.subcommands = set(re.findall(r"^  ([a-z][a-z-]*)  ", help_text, re.M)) - {"help"}


def read_binaries(bin_dir: Path) -> dict[str, Binary]:
    binaries = {}
    for name in BINARIES:
        out = subprocess.run(
            [str(bin_dir / name), "--help"], capture_output=True, text=True, check=True
        ).stdout
        binaries[name] = Binary(name, out)
    return binaries


def check_command(where: str, binary: Binary, args: list, proxy_port: int | None) -> None:
    """Flags, values, listen address and --api-base of one container's arguments."""
    args = [a for a in args if isinstance(a, str)]
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            if flag not in binary.flags:
                finding(where, f"{binary.name} has no flag {flag} (it has {', '.join(sorted(binary.flags))})")
                continue
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
            if flag in binary.values and value not in binary.values[flag]:
                finding(where, f"{binary.name} {flag} {value!r}: expected one of {binary.values[flag]}")
        elif i == 0 or not args[i - 1].startswith("-"):
            if arg not in binary.subcommands:
                finding(where, f"{binary.name}: unexpected argument {arg!r}")
    value = dict(zip(args, args[1:]))
    if binary.port is not None:
        listen = value.get("--listen")
        if listen is None:
            finding(where, f"{binary.name} without --listen listens on loopback only; pass --listen 0.0.0.0:{binary.port}")
        elif listen != f"0.0.0.0:{binary.port}":
            finding(where, f"{binary.name} --listen {listen}: expected 0.0.0.0:{binary.port} (its port, every interface)")
    if "--api-base" in binary.flags:
        api = value.get("--api-base")
        if api is None:
            finding(where, f"{binary.name} needs --api-base pointing at the proxy")
        elif proxy_port is not None and urlsplit(api).port != proxy_port:
            finding(where, f"{binary.name} --api-base {api}: the proxy listens on port {proxy_port}")


# -- routes.toml ---------------------------------------------------------------------------------


class Routes:
    """One shipped routes.toml: where it is, its text and what it says."""

    def __init__(self, where: str, text: str):
        self.where = where
        self.text = text
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            finding(where, f"not TOML: {e}")
            self.data = {}
        proxy = self.data.get("proxy", {})
        self.listen_port = port_of(proxy.get("listen", ""))
        self.admin_port = port_of(proxy.get("admin", ""))

    def check(self, binaries: dict[str, Binary]) -> None:
        proxy = self.data.get("proxy", {})
        for key in ("listen", "admin"):
            if not str(proxy.get(key, "")).startswith("0.0.0.0:"):
                finding(self.where, f"[proxy] {key} = {proxy.get(key)!r}: inside a container it must bind 0.0.0.0 to be reachable")
        for name, service in self.data.get("services", {}).items():
            binary = binaries.get(BACKENDS.get(name, ""))
            url = urlsplit(str(service.get("url", "")))
            if binary and url.port != binary.port:
                finding(self.where, f"services.{name}.url {service.get('url')}: {binary.name} listens on port {binary.port}")


def port_of(address: str) -> int | None:
    m = re.search(r":(\d+)$", str(address))
    return int(m.group(1)) if m else None


# -- Each kind of deployment file ----------------------------------------------------------------


def check_dockerfile(path: Path, rel: str, binaries: dict[str, Binary], proxy_port: int) -> None:
    stage = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            stage = m.group(1)
        m = re.match(r"CMD\s+(\[.*\])\s*$", line)
        if m and stage in binaries:
            check_command(f"{rel}:{n}", binaries[stage], json.loads(m.group(1)), proxy_port)
        m = re.match(r"ENTRYPOINT\s+(\[.*\])\s*$", line)
        if m and stage in binaries and json.loads(m.group(1))[0] != stage:
            finding(f"{rel}:{n}", f"stage {stage} runs {json.loads(m.group(1))[0]}")


def check_compose(path: Path, rel: str, compose: str, binaries, routes_by_dir) -> None:
    out = subprocess.run(
        [compose, "-f", str(path), "config", "--format", "json"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return  # the compose step reports it
    config = json.loads(out.stdout)
    for name, service in config.get("services", {}).items():
        where = f"{rel}: services.{name}"
        binds = [v for v in service.get("volumes", []) if v.get("type") == "bind"]
        for bind in binds:
            if not Path(bind["source"]).is_dir():
                finding(where, f"bind mount of {bind['source']}: mount the directory, not a single file (a rename-save on the host replaces the file's inode and the container keeps the old one)")
        target = (service.get("build") or {}).get("target")
        if target not in binaries:
            continue
        command = service.get("command") or []
        routes = None
        if target == "strangler-proxy":
            config_file = dict(zip(command, command[1:])).get("--config", "routes.toml")
            mount = next((b for b in binds if b["target"] == str(Path(config_file).parent)), None)
            if mount is None:
                finding(where, f"--config {config_file}: bind-mount the directory {Path(config_file).parent}")
            else:
                routes = routes_by_dir.get(Path(mount["source"]).resolve())
                if routes is None:
                    finding(where, f"{mount['source']} holds no routes.toml")
        proxy_ports = {r.listen_port for r in routes_by_dir.values()}
        check_command(where, binaries[target], command, next(iter(proxy_ports)) if len(proxy_ports) == 1 else None)


def check_kubernetes(k8s: Path, rel: str, binaries, routes: Routes | None) -> None:
    docs = []
    for path in sorted(k8s.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{rel}/{path.name}", doc))
    kustomization = k8s / "kustomization.yaml"
    if kustomization.exists():
        listed = set(yaml.safe_load(kustomization.read_text()).get("resources", []))
        present = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}
        for missing in sorted(present - listed):
            finding(f"{rel}/kustomization.yaml", f"does not list {missing}")
        for extra in sorted(listed - present):
            finding(f"{rel}/kustomization.yaml", f"lists {extra}, which does not exist")
    for where, doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("containers", []):
            m = re.match(r"(?:.*/)?([a-z-]+):[\w.-]+$", container.get("image", ""))
            binary = binaries.get(m.group(1)) if m else None
            for mount in container.get("volumeMounts", []):
                if "subPath" in mount or "subPathExpr" in mount:
                    finding(where, f"volumeMount {mount['name']} uses subPath, which never sees ConfigMap updates")
            if binary is None:
                continue
            args = container.get("args", [])
            check_command(f"{where}: {doc['metadata']['name']}", binary, args, routes.listen_port if routes else None)
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            if binary.name == "strangler-proxy":
                config_dir = str(Path(dict(zip(args, args[1:])).get("--config", "routes.toml")).parent)
                mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == config_dir), None)
                if mount is None or "configMap" not in volumes.get(mount["name"], {}):
                    finding(where, f"mount the routes ConfigMap as the directory {config_dir}")
                if routes and (ports.get("http"), ports.get("admin")) != (routes.listen_port, routes.admin_port):
                    finding(where, f"container ports {ports} differ from routes.toml's listen/admin ports {routes.listen_port}/{routes.admin_port}")
            elif binary.port not in ports.values():
                finding(where, f"{binary.name} listens on {binary.port}, not among its container ports {ports}")


def resolve(node, params: dict, template: dict):
    """Evaluates the intrinsic functions a task definition uses, for given parameter values."""
    if isinstance(node, list):
        return [resolve(n, params, template) for n in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            return params.get(arg, f"<{arg}>")
        if fn == "Fn::FindInMap":
            m, k1, k2 = (resolve(a, params, template) for a in arg)
            return template["Mappings"][m][k1][k2]
        if fn == "Fn::If":
            cond, yes, no = arg
            return resolve(yes if condition(cond, params, template) else no, params, template)
        if fn == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else arg
            values = {**params, **{k: resolve(v, params, template) for k, v in extra.items()}}
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(values.get(m.group(1), m.group(0))), text)
        if fn.startswith("Fn::") or fn == "Condition":
            return f"<{fn}>"
    return {k: resolve(v, params, template) for k, v in node.items()}


def condition(name: str, params: dict, template: dict) -> bool:
    def ev(node):
        (fn, arg), = node.items()
        if fn == "Fn::Equals":
            a, b = (resolve(x, params, template) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not ev(arg[0])
        if fn == "Fn::And":
            return all(ev(a) for a in arg)
        if fn == "Fn::Or":
            return any(ev(a) for a in arg)
        if fn == "Condition":
            return condition(arg, params, template)
        raise ValueError(fn)
    return ev(template["Conditions"][name])


def check_cloudformation(ecs: Path, rel: str, binaries, routes: Routes | None, work: Path) -> None:
    for path in sorted(ecs.glob("*.yaml")):
        template = cfn_yaml.load(str(path))
        if "Resources" not in template:
            continue
        service = template.get("Parameters", {}).get("Service", {})
        variants = [{"Service": v} for v in service.get("AllowedValues", [])] or [{}]
        for params in variants:
            params = {**params, "ClusterStack": "STACK", "AWS::Region": "REGION"}
            for res_name, res in template["Resources"].items():
                if res.get("Type") != "AWS::ECS::TaskDefinition":
                    continue
                for c in res["Properties"].get("ContainerDefinitions", []):
                    c = resolve(c, params, template)
                    where = f"{rel}/{path.name}: {res_name} {c['Name']}" + (f" (Service={params['Service']})" if "Service" in params else "")
                    if c.get("EntryPoint", [None])[0] in ("/bin/bash", "/bin/sh") and c.get("Command"):
                        (work / "snippets").mkdir(exist_ok=True)
                        snippet = work / "snippets" / f"{path.stem}-{c['Name']}.sh"
                        snippet.write_text(f"#!{c['EntryPoint'][0]}\n# {where}\n{c['Command'][0]}")
                    binary = binaries.get(c["Name"])
                    if binary is None:
                        continue
                    check_command(where, binary, c.get("Command", []), routes.listen_port if routes else None)
                    ports = {p["ContainerPort"] for p in c.get("PortMappings", [])}
                    want = {routes.listen_port, routes.admin_port} if binary.name == "strangler-proxy" and routes else {binary.port}
                    if not want <= {int(p) for p in ports}:
                        finding(where, f"port mappings {sorted(ports)} should include {sorted(want)}")
                    health = [str(x) for x in c.get("HealthCheck", {}).get("Command", [])]
                    probe_port = int(health[2]) if health[:2] == ["CMD", "probe"] else None
                    expected = routes.admin_port if binary.name == "strangler-proxy" and routes else binary.port
                    if probe_port != expected:
                        finding(where, f"health check {health} should probe port {expected}")
                    if binary.name == "strangler-proxy":
                        config_dir = str(Path(dict(zip(c["Command"], c["Command"][1:])).get("--config", "")).parent)
                        if not any(m["ContainerPath"] == config_dir for m in c.get("MountPoints", [])):
                            finding(where, f"mount a volume at {config_dir}, the directory the proxy watches")


# -- Metric names and dashboards ------------------------------------------------------------------


def known_metrics(metrics_rs: Path) -> dict[str, str]:
    """Metric name -> kind, from the declarations in strangler-proxy/src/metrics.rs."""
    source = metrics_rs.read_text()
    known = {}
    for m in re.finditer(r'(\w+)\(\s*"(strangler_\w+)"', source):
        known[m.group(2)] = m.group(1)
    for m in re.finditer(r'(HistogramOpts|Opts|IntGauge)::new\(\s*"(strangler_\w+)"', source):
        known[m.group(2)] = "histogram" if m.group(1) == "HistogramOpts" else "other"
    # The names are public constants (`pub mod names`), each under a doc line saying its kind.
    for m in re.finditer(r'///\s*(\w+)[^\n]*\n\s*pub const \w+: &str = "(strangler_\w+)"', source):
        known[m.group(2)] = "histogram" if m.group(1) == "Histogram" else "other"
    return known


def check_metric_names(tree: Path, known: dict[str, str]) -> None:
    infra = tree / "infrastructure"
    for path in sorted(infra.rglob("*")):
        if path.suffix not in {".yml", ".yaml", ".json", ".md", ".toml"} or not path.is_file():
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"(?<![\w:])strangler_[a-z_]+\b", line):
                name = m.group(0)
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name in known or (base in known and known[base] == "histogram"):
                    continue
                finding(f"{path.relative_to(tree)}:{n}", f"no metric {name} in strangler-proxy/src/metrics.rs")


GRAFANA_VARIABLES = {
    "$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
    "${__rate_interval}": "5m", "$route": "users", "${route}": "users",
}


def dashboard_rules(tree: Path, work: Path) -> None:
    """Writes each dashboard's expressions as recording rules, so promtool parses them."""
    out = work / "dashboard-rules"
    out.mkdir(exist_ok=True)
    for path in sorted((tree / "infrastructure").rglob("*.json")):
        rel = path.relative_to(tree)
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            finding(str(rel), f"not JSON: {e}")
            continue
        rules = []

        def walk(panels):
            for panel in panels:
                walk(panel.get("panels", []))
                for target in panel.get("targets", []):
                    expr = target.get("expr", "")
                    for var, value in GRAFANA_VARIABLES.items():
                        expr = expr.replace(var, value)
                    if "$" in expr:
                        finding(str(rel), f"panel {panel.get('title')!r}: unknown variable in {expr}")
                    rules.append({"record": f"dashboard:panel_{len(rules)}", "expr": expr})

        walk(dashboard.get("panels", []))
        if not rules:
            finding(str(rel), "no panel expressions")
        (out / f"{path.stem}.yml").write_text(yaml.safe_dump({"groups": [{"name": str(rel), "rules": rules}]}))


def check_prometheus_ports(tree: Path, admin_ports: set[int]) -> None:
    for path in sorted((tree / "infrastructure").rglob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or "scrape_configs" not in doc:
            continue
        for job in doc["scrape_configs"]:
            ports = {port_of(t) for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
            ports |= {sd.get("port") for sd in job.get("dns_sd_configs", [])}
            if job.get("job_name") == "strangler-proxy" and not ports <= admin_ports:
                finding(str(path.relative_to(tree)), f"scrapes ports {sorted(ports)}; the proxies' admin listeners are on {sorted(admin_ports)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="directory holding infrastructure/")
    parser.add_argument("--repo", type=Path, required=True, help="the repository (for metrics.rs)")
    parser.add_argument("--bin-dir", type=Path, required=True, help="directory of built binaries")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--compose", required=True, help="the docker-compose binary")
    args = parser.parse_args()
    tree, work = args.tree.resolve(), args.work
    infra = tree / "infrastructure"
    binaries = read_binaries(args.bin_dir)

    # Every routes.toml shipped, written out for `strangler-proxy check`.
    (work / "routes").mkdir(parents=True, exist_ok=True)
    routes_by_dir: dict[Path, Routes] = {}
    all_routes: list[Routes] = []
    for path in sorted(infra.rglob("routes.toml")):
        r = Routes(str(path.relative_to(tree)), path.read_text())
        routes_by_dir[path.parent.resolve()] = r
        all_routes.append(r)
    k8s_routes = None
    for path in sorted((infra / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and "routes.toml" in doc.get("data", {}):
                k8s_routes = Routes(f"{path.relative_to(tree)} (data.routes.toml)", doc["data"]["routes.toml"])
                all_routes.append(k8s_routes)
    for r in all_routes:
        r.check(binaries)
        # Under its own path, so `strangler-proxy check` run in work/routes names it as here.
        out = work / "routes" / re.sub(r" \((.*)\)$", r"[\1]", r.where)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(r.text)

    check_dockerfile(infra / "docker" / "Dockerfile", "infrastructure/docker/Dockerfile", binaries,
                     all_routes[0].listen_port if all_routes else 8080)
    for path in sorted(infra.rglob("compose*.yaml")):
        check_compose(path, str(path.relative_to(tree)), args.compose, binaries,
                      {d: r for d, r in routes_by_dir.items() if d.is_relative_to(path.parent)})
    check_kubernetes(infra / "k8s", "infrastructure/k8s", binaries, k8s_routes)
    check_cloudformation(infra / "ecs", "infrastructure/ecs", binaries,
                         routes_by_dir.get((infra / "ecs").resolve()), work)
    check_metric_names(tree, known_metrics(args.repo / "strangler-proxy" / "src" / "metrics.rs"))
    dashboard_rules(tree, work)
    check_prometheus_ports(tree, {r.admin_port for r in all_routes})

    for f in findings:
        print(f)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
