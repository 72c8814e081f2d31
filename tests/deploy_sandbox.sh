#!/usr/bin/env bash
# Runs pixgate the way deploy/kubernetes/deployment.yaml (+ configmap.yaml) runs it, on this
# machine, without a container runtime: same environment (the image's ENV from deploy/Dockerfile,
# then the ConfigMap through envFrom, then the container's env), same command line (ENTRYPOINT +
# the container's args), the same user (runAsUser / runAsGroup / fsGroup), a read-only root
# filesystem on which only the declared emptyDir volumes are writable, and the secret volume as
# files at the manifest's mountPath.
#
# Usage:  tests/deploy_sandbox.sh BIN REPO_DIR
#   BIN       the pixgate binary (stands in for the image's COPY --from=build .../pixgate)
#   REPO_DIR  the repository: deploy/kubernetes/{deployment,configmap}.yaml, deploy/Dockerfile
#             and config/pixgate.toml (the image's COPY config/pixgate.toml) are read from it.
#
# Needs root, unshare(1) and setpriv(1) (util-linux), python3 with PyYAML (SANDBOX_PYTHON picks
# another interpreter), a Debian bookworm host (its /usr stands in for the image's). It builds the
# container's root filesystem on a tmpfs inside a private mount (and UTS) namespace, then
# execs `chroot ROOT setpriv ... env -i ... pixgate ARGS`: the script's PID becomes pixgate's
# PID (no process is left behind: kill the PID and pixgate is gone; SIGTERM is the image's
# STOPSIGNAL and reaches pixgate itself). pixgate's stdout is the script's stdout (nothing else
# is written there); everything the script says goes to stderr. A parent-death signal set by
# the caller (PR_SET_PDEATHSIG) is kept across the uid change.
#
# Overrides (environment of this script; everything else comes from the manifests):
#   SANDBOX_S3_ENDPOINT        -> PIXGATE__STORAGE__S3_ENDPOINT, and
#                                 PIXGATE__STORAGE__S3_FORCE_PATH_STYLE=true (what configmap.yaml
#                                 says to add for S3-compatible stores)
#   SANDBOX_S3_REGION          -> replaces PIXGATE__STORAGE__S3_REGION (optional; e.g. "garage")
#   SANDBOX_BUCKET_ORIGINALS   -> replaces PIXGATE__STORAGE__S3_BUCKET
#   SANDBOX_BUCKET_DERIVED     -> replaces PIXGATE__STORAGE__S3_DERIVED_BUCKET
#   SANDBOX_BUCKET_AUDIT       -> PIXGATE__STORAGE__S3_AUDIT_BUCKET (optional)
#   SANDBOX_REDIS_URL          -> PIXGATE__REDIS__URL, and PIXGATE__REDIS__CLUSTER_URLS="" (the
#                                 manifest's Redis Cluster seeds are replaced by one Redis)
#   SANDBOX_REDIS_KEY_PREFIX   -> PIXGATE__REDIS__KEY_PREFIX (optional; for a shared test Redis)
#   SANDBOX_LISTEN             -> replaces PIXGATE__SERVER__LISTEN
#   SANDBOX_METRICS_LISTEN     -> replaces PIXGATE__SERVER__METRICS_LISTEN
#   SANDBOX_ISSUER / SANDBOX_AUDIENCE -> replace PIXGATE__AUTH__JWT_ISSUER / _AUDIENCE
#   Secret volume items (file content; required for every item the manifest mounts):
#   SANDBOX_SIGNING_KEY        -> item key signing-key
#   SANDBOX_SIGNING_SALT       -> item key signing-salt
#   SANDBOX_JWT_SECRET         -> item key jwt-hs256-secret
#   SANDBOX_AWS_ACCESS_KEY_ID + SANDBOX_AWS_SECRET_ACCESS_KEY -> item key aws-credentials
#                                 ("[default]" shared-credentials file, as secret.example.yaml)
#   SANDBOX_SECRET_<KEY>       -> any other item key (KEY upper-cased, '-' and '.' as '_'); also
#                                 what an env valueFrom.secretKeyRef resolves to
#   SANDBOX_HOSTNAME           -> the pod name (HOSTNAME and the UTS host name); default
#                                 pixgate-sandbox-<random>
# Self test:
#   SANDBOX_SELFTEST_DROP_VOLUMES=1  leaves the emptyDir volumes out (their mount points stay on
#                                 the read-only root): pixgate must then fail to start.
#   SANDBOX_SKIP_WRITABLE_CHECK=1 skips the "nothing but the volumes is writable" walk (~1 s).
#
# Anything in the manifests this script does not model (another volume type, a valueFrom it
# cannot resolve, $(VAR) references, subPath, capabilities.add, another Dockerfile instruction
# or RUN command, ...) is an error, not silently ignored.
#
# As the kubelet makes them: an emptyDir is a fresh directory of mode 0777, with fsGroup chgrp'ed
# to it and setgid (2777 root:fsGroup; here a tmpfs, sizeLimit as its size); a secret volume is a
# read-only tmpfs of ..data symlinks (files root:fsGroup, mode = item mode or defaultMode). The
# runtime adds HOSTNAME (the pod name) and HOME (the user's passwd home) to the environment.
# The new root is mounted on SANDBOX_MOUNTPOINT (default /run/pixgate-deploy-sandbox) inside the
# private namespace only; the host keeps an empty directory there, shared by concurrent runs.
#
# Not reproduced: the network namespace (pixgate shares the host's network, like hostNetwork),
# the PID namespace (pixgate is not PID 1), seccomp RuntimeDefault, the cgroup CPU/memory limits,
# the probes and the preStop hook, the KUBERNETES_SERVICE_* variables the kubelet always adds.
set -euo pipefail

SANDBOX_MOUNTPOINT=${SANDBOX_MOUNTPOINT:-/run/pixgate-deploy-sandbox}

die() {
	echo "deploy_sandbox: error: $*" >&2
	exit 1
}
say() { echo "deploy_sandbox: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Reads the manifests and the Dockerfile; prints the plan as shell assignments (for eval).
plan() {
	local bin=$1 repo=$2
	"${SANDBOX_PYTHON:-python3}" - "$bin" "$repo" <<'PY'
import base64, json, os, re, shlex, sys

try:
    import yaml
except ImportError:
    sys.exit("deploy_sandbox: error: python3 has no PyYAML (import yaml)")

bin_path, repo = sys.argv[1], sys.argv[2]
kdir = os.path.join(repo, "deploy", "kubernetes")
errors = []


def die(msg):
    sys.exit(f"deploy_sandbox: error: {msg}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- Kubernetes objects ------------------------------------------------------------------
docs = load_all(os.path.join(kdir, "deployment.yaml")) + load_all(
    os.path.join(kdir, "configmap.yaml")
)
deployments = [d for d in docs if d.get("kind") == "Deployment"]
if len(deployments) != 1:
    die(f"expected one Deployment in deployment.yaml, found {len(deployments)}")
configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
for d in docs:
    if d.get("kind") not in ("Deployment", "ConfigMap"):
        die(f"unexpected object kind {d.get('kind')!r} in deployment.yaml/configmap.yaml")

# kustomization.yaml may transform the objects (name prefixes, patches, generators, images):
# only a plain resource list is understood.
kust_path = os.path.join(kdir, "kustomization.yaml")
if os.path.exists(kust_path):
    kust = yaml.safe_load(open(kust_path)) or {}
    unknown = set(kust) - {"apiVersion", "kind", "resources"}
    if unknown:
        die(f"kustomization.yaml has {sorted(unknown)}: transformations are not modelled")

pod = deployments[0]["spec"]["template"]["spec"]
known_pod = {
    "automountServiceAccountToken", "enableServiceLinks", "terminationGracePeriodSeconds",
    "securityContext", "topologySpreadConstraints", "containers", "volumes",
    "serviceAccountName", "affinity", "nodeSelector", "tolerations", "priorityClassName",
}
unknown = set(pod) - known_pod
if unknown:
    die(f"pod spec has {sorted(unknown)}, which this sandbox does not model")
if pod.get("automountServiceAccountToken", True) is not False:
    die("automountServiceAccountToken is not false: a service account token volume would be mounted")
containers = pod["containers"]
if len(containers) != 1:
    die(f"expected one container, found {len(containers)}")
c = containers[0]
known_c = {
    "name", "image", "imagePullPolicy", "args", "command", "ports", "envFrom", "env",
    "resources", "securityContext", "startupProbe", "livenessProbe", "readinessProbe",
    "lifecycle", "volumeMounts", "workingDir",
}
unknown = set(c) - known_c
if unknown:
    die(f"container has {sorted(unknown)}, which this sandbox does not model")

psc = pod.get("securityContext") or {}
csc = c.get("securityContext") or {}
known_psc = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile",
             "supplementalGroups"}
known_csc = {"runAsNonRoot", "runAsUser", "runAsGroup", "readOnlyRootFilesystem",
             "allowPrivilegeEscalation", "privileged", "capabilities", "seccompProfile"}
if set(psc) - known_psc:
    die(f"pod securityContext has {sorted(set(psc) - known_psc)}")
if set(csc) - known_csc:
    die(f"container securityContext has {sorted(set(csc) - known_csc)}")
if csc.get("privileged"):
    die("privileged containers are not modelled")
caps = csc.get("capabilities") or {}
if caps.get("add"):
    die(f"capabilities.add {caps['add']} is not modelled")
drop_all = [x.upper() for x in caps.get("drop") or []] == ["ALL"]
if caps.get("drop") and not drop_all:
    die(f"capabilities.drop {caps['drop']} (other than [ALL]) is not modelled")


def expand_check(where, s):
    # Kubernetes expands $(VAR) in env values, command and args; not modelled.
    if isinstance(s, str) and "$(" in s:
        die(f"{where} uses a $(VAR) reference ({s!r}), which this sandbox does not expand")


# --- the image (deploy/Dockerfile, final stage) -------------------------------------------
dockerfile = open(os.path.join(repo, "deploy", "Dockerfile")).read()
logical = []
cur = ""
for raw in dockerfile.splitlines():
    line = raw.strip()
    if line.startswith("#") or (not line and cur):
        continue
    if not line:
        continue
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    logical.append(cur + line)
    cur = ""
if cur:
    logical.append(cur)
stages = []
for l in logical:
    word = l.split(None, 1)[0].upper()
    if word == "FROM":
        stages.append([l])
    elif stages:
        stages[-1].append(l)
    elif word != "ARG":
        die(f"Dockerfile: {l!r} before FROM")
final = stages[-1]
base = final[0].split()[1]
if not re.match(r"^debian:bookworm(-slim)?$", base):
    die(f"Dockerfile: final base {base!r}: only debian:bookworm(-slim) is modelled (the host's /usr stands in for it)")
host_codename = ""
try:
    for l in open("/etc/os-release"):
        if l.startswith("VERSION_CODENAME="):
            host_codename = l.split("=", 1)[1].strip().strip('"')
except OSError:
    pass
if host_codename != "bookworm":
    die(f"the host is not Debian bookworm ({host_codename!r}): its /usr does not stand in for {base}")

image_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
image_user = "0"
image_workdir = "/"
entrypoint = None
cmd = None
copies = []  # (source kind, source, dest)
users = []  # (name, uid, gid, home)
apt_packages = []
for l in final[1:]:
    word, _, rest = l.partition(" ")
    word = word.upper()
    rest = rest.strip()
    if word == "ENV":
        parts = shlex.split(rest)
        if parts and "=" not in parts[0]:
            image_env[parts[0]] = rest.split(None, 1)[1] if len(parts) > 1 else ""
        else:
            for p in parts:
                k, _, v = p.partition("=")
                image_env[k] = v
    elif word == "USER":
        image_user = rest
    elif word == "WORKDIR":
        image_workdir = rest if rest.startswith("/") else os.path.join(image_workdir, rest)
    elif word in ("ENTRYPOINT", "CMD"):
        if not rest.startswith("["):
            die(f"Dockerfile: shell-form {word} is not modelled")
        v = json.loads(rest)
        if word == "ENTRYPOINT":
            entrypoint = v
            cmd = None  # ENTRYPOINT resets an inherited CMD
        else:
            cmd = v
    elif word == "COPY":
        parts = shlex.split(rest)
        opts = [p for p in parts if p.startswith("--")]
        args = [p for p in parts if not p.startswith("--")]
        if len(args) != 2:
            die(f"Dockerfile: COPY {rest!r}: one source and one destination expected")
        src, dest = args
        if opts == ["--from=build"]:
            if os.path.basename(src) != "pixgate" or "/target/release/" not in src:
                die(f"Dockerfile: COPY --from=build {src}: only the pixgate binary is modelled")
            copies.append(("bin", bin_path, dest))
        elif not opts:
            s = os.path.join(repo, src)
            if not os.path.isfile(s):
                die(f"Dockerfile: COPY {src}: not a file in {repo}")
            copies.append(("file", s, dest))
        else:
            die(f"Dockerfile: COPY options {opts} are not modelled")
    elif word == "RUN":
        for step in [s.strip() for s in rest.split("&&")]:
            w = shlex.split(step)
            if w[:2] == ["apt-get", "update"]:
                continue
            if w[:2] == ["apt-get", "install"]:
                apt_packages += [p for p in w[2:] if not p.startswith("-")]
                continue
            if w == ["rm", "-rf", "/var/lib/apt/lists/*"]:
                continue
            if w[0] == "useradd":
                o = {}
                i = 1
                flags = {"--system", "--user-group", "--create-home", "-r", "-U", "-m"}
                while i < len(w) - 1:
                    if w[i] in flags:
                        o[w[i]] = True
                        i += 1
                    elif w[i] in ("--uid", "-u", "--home-dir", "-d", "--shell", "-s"):
                        o[w[i]] = w[i + 1]
                        i += 2
                    else:
                        die(f"Dockerfile: useradd option {w[i]} is not modelled")
                name = w[-1]
                uid = int(o.get("--uid", o.get("-u")))
                if not (o.get("--user-group") or o.get("-U")):
                    die("Dockerfile: useradd without --user-group is not modelled")
                home = o.get("--home-dir", o.get("-d", f"/home/{name}"))
                shell = o.get("--shell", o.get("-s", "/bin/sh"))
                users.append((name, uid, uid, home, shell,
                              bool(o.get("--create-home") or o.get("-m"))))
                continue
            die(f"Dockerfile: RUN step {step!r} is not modelled")
    elif word in ("EXPOSE", "STOPSIGNAL", "LABEL"):
        pass
    else:
        die(f"Dockerfile: instruction {word} in the final stage is not modelled")

# The runtime image's packages must be on this host (its /usr stands in for the image's).
import subprocess

for p in apt_packages:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
    if "install ok installed" not in r.stdout:
        die(f"the image installs {p}, which is not installed on this host")

# --- process: user, groups ----------------------------------------------------------------
def lookup_user(spec):
    for u in users:
        if spec in (u[0], str(u[1])):
            return u
    return None

iu, _, ig = image_user.partition(":")
u = lookup_user(iu)
if u is None and not iu.isdigit():
    die(f"Dockerfile USER {image_user}: unknown user")
run_uid = csc.get("runAsUser", psc.get("runAsUser", u[1] if u else int(iu)))
if "runAsGroup" in csc or "runAsGroup" in psc:
    run_gid = csc.get("runAsGroup", psc.get("runAsGroup"))
elif ig:
    run_gid = int(ig) if ig.isdigit() else die(f"USER group {ig} by name is not modelled")
else:
    u2 = lookup_user(str(run_uid))
    run_gid = u2[2] if u2 else 0
if (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) and run_uid == 0:
    die("runAsNonRoot with uid 0: the kubelet would refuse to start the container")
fs_group = psc.get("fsGroup")
groups = []
for g in ([fs_group] if fs_group is not None else []) + list(psc.get("supplementalGroups") or []):
    if g not in groups:
        groups.append(int(g))
run_user = lookup_user(str(run_uid))
home = run_user[3] if run_user else "/"

# --- environment: image ENV < envFrom < env -----------------------------------------------
# Secret contents (files of secret volumes, secretKeyRef values) come from SANDBOX_* variables.
def aws_credentials():
    k = os.environ.get("SANDBOX_AWS_ACCESS_KEY_ID")
    s = os.environ.get("SANDBOX_AWS_SECRET_ACCESS_KEY")
    if not k or not s:
        return None
    return f"[default]\naws_access_key_id = {k}\naws_secret_access_key = {s}\n"


NAMED_SECRETS = {
    "signing-key": lambda: os.environ.get("SANDBOX_SIGNING_KEY"),
    "signing-salt": lambda: os.environ.get("SANDBOX_SIGNING_SALT"),
    "jwt-hs256-secret": lambda: os.environ.get("SANDBOX_JWT_SECRET"),
    "aws-credentials": aws_credentials,
}


def secret_value(secret_name, key):
    generic = "SANDBOX_SECRET_" + re.sub(r"[-.]", "_", key).upper()
    v = os.environ.get(generic)
    if v is None and key in NAMED_SECRETS:
        v = NAMED_SECRETS[key]()
    if v is None:
        hint = {
            "signing-key": "SANDBOX_SIGNING_KEY",
            "signing-salt": "SANDBOX_SIGNING_SALT",
            "jwt-hs256-secret": "SANDBOX_JWT_SECRET",
            "aws-credentials": "SANDBOX_AWS_ACCESS_KEY_ID and SANDBOX_AWS_SECRET_ACCESS_KEY",
        }.get(key, generic)
        die(f"secret {secret_name} key {key}: set {hint}")
    return v


env = dict(image_env)
for ef in c.get("envFrom") or []:
    prefix = ef.get("prefix", "")
    if set(ef) - {"prefix", "configMapRef"}:
        die(f"envFrom entry {ef}: only configMapRef is modelled")
    ref = ef["configMapRef"]
    cm = configmaps.get(ref["name"])
    if cm is None:
        if ref.get("optional"):
            continue
        die(f"envFrom configMapRef {ref['name']}: no such ConfigMap in configmap.yaml")
    if cm.get("binaryData"):
        die(f"ConfigMap {ref['name']} has binaryData")
    for k, v in (cm.get("data") or {}).items():
        name = prefix + k
        if not re.match(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", name):
            die(f"ConfigMap {ref['name']} key {k!r} is not a valid variable name")
        if not isinstance(v, str):
            die(f"ConfigMap {ref['name']} key {k}: value {v!r} is not a string")
        env[name] = v

secret_volume_names = {
    v["name"]: v["secret"]["secretName"] for v in pod.get("volumes") or [] if "secret" in v
}
for e in c.get("env") or []:
    name = e["name"]
    if "value" in e:
        v = e["value"]
        if not isinstance(v, str):
            die(f"env {name}: value {v!r} is not a string")
        expand_check(f"env {name}", v)
        env[name] = v
    elif "valueFrom" in e:
        vf = e["valueFrom"]
        if "configMapKeyRef" in vf:
            r = vf["configMapKeyRef"]
            cm = configmaps.get(r["name"])
            data = (cm or {}).get("data") or {}
            if r["key"] not in data:
                if r.get("optional"):
                    continue
                die(f"env {name}: configMapKeyRef {r['name']}/{r['key']} not found")
            env[name] = data[r["key"]]
        elif "secretKeyRef" in vf:
            r = vf["secretKeyRef"]
            env[name] = secret_value(r["name"], r["key"])
        else:
            die(f"env {name}: valueFrom {sorted(vf)} is not modelled")
    else:
        env[name] = ""

# --- overrides ------------------------------------------------------------------------------
def replace(var, sandbox_var):
    v = os.environ.get(sandbox_var)
    if v is None:
        return
    if var not in env:
        die(f"{sandbox_var}: the manifest does not set {var} (nothing to replace)")
    env[var] = v


def add(var, sandbox_var):
    v = os.environ.get(sandbox_var)
    if v is not None:
        env[var] = v


replace("PIXGATE__SERVER__LISTEN", "SANDBOX_LISTEN")
replace("PIXGATE__SERVER__METRICS_LISTEN", "SANDBOX_METRICS_LISTEN")
replace("PIXGATE__STORAGE__S3_REGION", "SANDBOX_S3_REGION")
replace("PIXGATE__STORAGE__S3_BUCKET", "SANDBOX_BUCKET_ORIGINALS")
replace("PIXGATE__STORAGE__S3_DERIVED_BUCKET", "SANDBOX_BUCKET_DERIVED")
add("PIXGATE__STORAGE__S3_AUDIT_BUCKET", "SANDBOX_BUCKET_AUDIT")
replace("PIXGATE__AUTH__JWT_ISSUER", "SANDBOX_ISSUER")
replace("PIXGATE__AUTH__JWT_AUDIENCE", "SANDBOX_AUDIENCE")
add("PIXGATE__REDIS__KEY_PREFIX", "SANDBOX_REDIS_KEY_PREFIX")
if os.environ.get("SANDBOX_S3_ENDPOINT") is not None:
    env["PIXGATE__STORAGE__S3_ENDPOINT"] = os.environ["SANDBOX_S3_ENDPOINT"]
    env["PIXGATE__STORAGE__S3_FORCE_PATH_STYLE"] = "true"
if os.environ.get("SANDBOX_REDIS_URL") is not None:
    env["PIXGATE__REDIS__URL"] = os.environ["SANDBOX_REDIS_URL"]
    if "PIXGATE__REDIS__CLUSTER_URLS" in env:
        env["PIXGATE__REDIS__CLUSTER_URLS"] = ""

hostname = os.environ.get("SANDBOX_HOSTNAME") or (
    "pixgate-sandbox-" + base64.b32encode(os.urandom(5)).decode().lower()[:5]
)
# What the runtime adds: HOSTNAME (the pod name); HOME from the user's passwd entry when unset.
env["HOSTNAME"] = hostname
env.setdefault("HOME", home)

# --- command line (Kubernetes: command replaces ENTRYPOINT and drops CMD; args replace CMD) ---
if "command" in c:
    argv = list(c["command"]) + list(c.get("args") or [])
elif "args" in c:
    argv = list(entrypoint or []) + list(c["args"])
else:
    argv = list(entrypoint or []) + list(cmd or [])
if not argv:
    die("no command: neither ENTRYPOINT/CMD nor command/args")
for a in argv:
    expand_check("command/args", a)
workdir = c.get("workingDir", image_workdir)

# --- volumes ----------------------------------------------------------------------------------
volumes = {v["name"]: v for v in pod.get("volumes") or []}
mounted = set()
emptydirs = []  # path|mode|size|ro
secret_mounts = []  # path
secret_files = []  # index|relpath|mode|base64
for m in c.get("volumeMounts") or []:
    unknown = set(m) - {"name", "mountPath", "readOnly"}
    if unknown:
        die(f"volumeMount {m['name']}: {sorted(unknown)} not modelled")
    v = volumes.get(m["name"])
    if v is None:
        die(f"volumeMount {m['name']}: no such volume")
    mounted.add(m["name"])
    path = m["mountPath"]
    if not path.startswith("/") or ":" in path or "|" in path:
        die(f"volumeMount {m['name']}: unusable mountPath {path!r}")
    kinds = set(v) - {"name"}
    if kinds == {"emptyDir"}:
        ed = v["emptyDir"] or {}
        if set(ed) - {"sizeLimit", "medium"}:
            die(f"emptyDir {v['name']}: {sorted(set(ed) - {'sizeLimit', 'medium'})}")
        size = str(ed.get("sizeLimit", ""))
        sm = re.match(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$", size) if size else None
        if size and not sm:
            die(f"emptyDir {v['name']}: sizeLimit {size!r} not understood")
        nbytes = ""
        if sm:
            mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[sm.group(2)]
            nbytes = str(int(sm.group(1)) * mult)
        # emptyDir: mode 0777; with fsGroup the kubelet chgrps it and adds setgid + g+rwx.
        mode = "2777" if fs_group is not None else "0777"
        emptydirs.append(f"{path}|{mode}|{nbytes}|{1 if m.get('readOnly') else 0}")
    elif kinds == {"secret"}:
        s = v["secret"]
        if set(s) - {"secretName", "defaultMode", "items", "optional"}:
            die(f"secret volume {v['name']}: {sorted(set(s) - {'secretName', 'defaultMode', 'items', 'optional'})}")
        if not s.get("items"):
            die(f"secret volume {v['name']}: without items the file names are the secret's keys, unknown here")
        idx = len(secret_mounts)
        secret_mounts.append(path)
        default_mode = s.get("defaultMode", 0o644)
        for it in s["items"]:
            if set(it) - {"key", "path", "mode"}:
                die(f"secret volume {v['name']} item {it}: not modelled")
            rel = it["path"]
            if rel.startswith("/") or ".." in rel.split("/") or "|" in rel:
                die(f"secret volume {v['name']}: item path {rel!r}")
            content = secret_value(s["secretName"], it["key"])
            mode = it.get("mode", default_mode)
            secret_files.append(
                f"{idx}|{rel}|{mode:o}|{base64.b64encode(content.encode()).decode()}"
            )
    else:
        die(f"volume {v['name']}: type {sorted(kinds)} is not modelled")
for name in volumes:
    if name not in mounted:
        die(f"volume {name} is declared but not mounted by the container")

read_only_root = bool(csc.get("readOnlyRootFilesystem"))
no_new_privs = csc.get("allowPrivilegeEscalation") is False

# --- plan ---------------------------------------------------------------------------------
def arr(name, items):
    print(f"{name}=(" + " ".join(shlex.quote(str(i)) for i in items) + ")")


def var(name, value):
    print(f"{name}={shlex.quote(str(value))}")


arr("P_ENV", [f"{k}={v}" for k, v in env.items()])
arr("P_ARGV", argv)
var("P_UID", run_uid)
var("P_GID", run_gid)
var("P_GROUPS", ",".join(str(g) for g in groups))
var("P_FSGROUP", "" if fs_group is None else fs_group)
var("P_WORKDIR", workdir)
var("P_HOSTNAME", hostname)
var("P_RO_ROOT", 1 if read_only_root else 0)
var("P_NNP", 1 if no_new_privs else 0)
var("P_DROP_CAPS", 1 if drop_all else 0)
arr("P_USERS", [f"{n}:x:{uid}:{gid}::{h}:{sh}" for n, uid, gid, h, sh, _ in users])
arr("P_GROUPS_LINES", [f"{n}:x:{gid}:" for n, uid, gid, h, sh, _ in users])
arr("P_HOMES", [f"{h}|{uid}|{gid}" for n, uid, gid, h, sh, mk in users if mk])
arr("P_COPIES", [f"{k}|{s}|{d}" for k, s, d in copies])
arr("P_EMPTYDIRS", emptydirs)
arr("P_SECRET_MOUNTS", secret_mounts)
arr("P_SECRET_FILES", secret_files)
PY
}

# ---------------------------------------------------------------------------------------------
# Inside the private mount namespace, as root: builds the root and execs pixgate.
inside() {
	local plan_text=$__PIXGATE_SANDBOX_PLAN
	unset __PIXGATE_SANDBOX_PLAN
	eval "$plan_text"
	local R=$SANDBOX_MOUNTPOINT
	local drop=${SANDBOX_SELFTEST_DROP_VOLUMES:-0}
	trap 'die "inside the sandbox, line $LINENO: \"$BASH_COMMAND\" failed"' ERR

	# Nothing of ours on stdout: it belongs to pixgate.
	exec 3>&1 1>&2

	mount -t tmpfs -o mode=0755,nosuid,nodev sandbox-root "$R"
	cd "$R"
	# The Debian image's skeleton (merged /usr: bin, lib, lib64, sbin are symlinks).
	mkdir -p usr etc dev proc sys tmp var/tmp var/lib var/cache var/log run home root mnt opt srv media boot
	chmod 1777 tmp var/tmp
	chmod 0700 root
	ln -s usr/bin bin
	ln -s usr/sbin sbin
	ln -s usr/lib lib
	[ -e /usr/lib64 ] && ln -s usr/lib64 lib64

	# /usr: the host's (Debian bookworm, like the image's base), read-only; /usr/local is the
	# image's (empty but for what the Dockerfile copies there).
	mount --rbind /usr usr
	mount -o remount,bind,ro usr
	mount -t tmpfs -o mode=0755,nosuid,nodev image-usr-local usr/local
	mkdir -p usr/local/bin usr/local/sbin usr/local/lib usr/local/share usr/local/etc usr/local/include usr/local/src

	# /etc: a minimal copy of the host's, the image's users, CA certificates read-only.
	local f
	for f in hosts resolv.conf nsswitch.conf passwd group host.conf gai.conf; do
		[ -e "/etc/$f" ] && cp -L "/etc/$f" "etc/$f"
	done
	printf '%s\n' "$P_HOSTNAME" >etc/hostname
	printf '127.0.0.1\t%s\n' "$P_HOSTNAME" >>etc/hosts
	local line
	for line in "${P_USERS[@]}"; do
		grep -q "^${line%%:*}:" etc/passwd && die "user ${line%%:*} exists on the host's passwd"
		printf '%s\n' "$line" >>etc/passwd
	done
	for line in "${P_GROUPS_LINES[@]}"; do
		grep -q "^${line%%:*}:" etc/group && die "group ${line%%:*} exists on the host's group"
		printf '%s\n' "$line" >>etc/group
	done
	mkdir -p etc/ssl
	mount --rbind /etc/ssl etc/ssl
	mount -o remount,bind,ro etc/ssl
	if [ -d /etc/ca-certificates ]; then
		mkdir -p etc/ca-certificates
		mount --rbind /etc/ca-certificates etc/ca-certificates
		mount -o remount,bind,ro etc/ca-certificates
	fi
	local home
	for home in "${P_HOMES[@]}"; do
		IFS='|' read -r h u g <<<"$home"
		mkdir -p ".$h"
		chown "$u:$g" ".$h"
		chmod 0755 ".$h"
	done

	# The Dockerfile's COPYs.
	local kind src dest
	for line in "${P_COPIES[@]}"; do
		IFS='|' read -r kind src dest <<<"$line"
		mkdir -p ".$(dirname "$dest")"
		case $kind in
		bin)
			: >".$dest"
			chmod 0755 ".$dest"
			mount --bind "$src" ".$dest"
			mount -o remount,bind,ro ".$dest"
			;;
		file)
			install -m "$(stat -c %a "$src")" "$src" ".$dest"
			;;
		esac
	done
	[ -d ".$P_WORKDIR" ] || mkdir -p ".$P_WORKDIR"

	# /dev like a container runtime's: a tmpfs with the usual nodes and /dev/shm (writable by
	# anyone, as in any container; readOnlyRootFilesystem does not cover it).
	mount -t tmpfs -o mode=0755,nosuid,size=65536k sandbox-dev dev
	local n
	for n in null zero full random urandom tty; do
		: >"dev/$n"
		mount --bind "/dev/$n" "dev/$n"
	done
	ln -s /proc/self/fd dev/fd
	ln -s /proc/self/fd/0 dev/stdin
	ln -s /proc/self/fd/1 dev/stdout
	ln -s /proc/self/fd/2 dev/stderr
	mkdir dev/shm
	mount -t tmpfs -o mode=1777,nosuid,nodev,noexec,size=65536k shm dev/shm
	mount -t proc -o nosuid,nodev,noexec proc proc
	mount -t sysfs -o ro,nosuid,nodev,noexec sysfs sys 2>/dev/null || {
		mount --rbind /sys sys
		mount -o remount,bind,ro sys
	}

	# Volumes. Secret volumes: a tmpfs laid out as the kubelet's atomic writer does
	# (..data -> ..TIMESTAMP/, one symlink per item), files root:fsGroup with the item's mode,
	# mounted read-only.
	local i path mode size ro rel b64
	for i in "${!P_SECRET_MOUNTS[@]}"; do
		path=${P_SECRET_MOUNTS[$i]}
		mkdir -p ".$path"
		mount -t tmpfs -o mode=1777,nosuid,nodev,noexec secret-volume ".$path"
		local ts
		ts="..$(date -u +%Y_%m_%d_%H_%M_%S).$$"
		mkdir ".$path/$ts"
		for line in "${P_SECRET_FILES[@]}"; do
			IFS='|' read -r idx rel mode b64 <<<"$line"
			[ "$idx" = "$i" ] || continue
			mkdir -p ".$path/$ts/$(dirname "$rel")"
			printf '%s' "$b64" | base64 -d >".$path/$ts/$rel"
			chmod "$mode" ".$path/$ts/$rel"
			ln -s "..data/${rel%%/*}" ".$path/${rel%%/*}" 2>/dev/null || true
		done
		ln -s "$ts" ".$path/..data"
		if [ -n "$P_FSGROUP" ]; then
			chgrp -hR "$P_FSGROUP" ".$path"
			find ".$path" -type d -exec chmod g+rxs {} +
		fi
		mount -o remount,ro ".$path"
	done
	local expected_writable=()
	for line in "${P_EMPTYDIRS[@]}"; do
		IFS='|' read -r path mode size ro <<<"$line"
		mkdir -p ".$path"
		if [ "$drop" = 1 ]; then
			say "SANDBOX_SELFTEST_DROP_VOLUMES=1: emptyDir $path NOT mounted"
			continue
		fi
		mount -t tmpfs -o "mode=$mode,nosuid,nodev${size:+,size=$size}" empty-dir ".$path"
		[ -n "$P_FSGROUP" ] && chgrp "$P_FSGROUP" ".$path" && chmod "$mode" ".$path"
		if [ "$ro" = 1 ]; then
			mount -o remount,ro ".$path"
		else
			expected_writable+=("$path")
		fi
	done

	# The read-only root filesystem.
	mount -o remount,ro usr/local
	if [ "$P_RO_ROOT" = 1 ]; then
		mount -o remount,ro "$R"
		if touch "$R/.sandbox-probe" 2>/dev/null; then
			die "the root is still writable after remounting it read-only"
		fi
	else
		say "readOnlyRootFilesystem is not true: the root stays writable"
	fi
	hostname "$P_HOSTNAME"

	local setpriv=(setpriv --reuid="$P_UID" --regid="$P_GID" --pdeathsig keep)
	if [ -n "$P_GROUPS" ]; then
		setpriv+=(--groups="$P_GROUPS")
	else
		setpriv+=(--clear-groups)
	fi
	[ "$P_NNP" = 1 ] && setpriv+=(--no-new-privs)
	[ "$P_DROP_CAPS" = 1 ] && setpriv+=(--inh-caps=-all --bounding-set=-all)

	# As the container's user, nothing but the writable volumes may be writable (/proc, /sys
	# and /dev are the runtime's, as in any container).
	if [ "${SANDBOX_SKIP_WRITABLE_CHECK:-0}" != 1 ] && [ "$P_RO_ROOT" = 1 ]; then
		local found expected
		found=$({ chroot "$R" "${setpriv[@]}" -- find / \( -path /proc -o -path /sys -o -path /dev \) \
			-prune -o \( -type d -o -type f \) -writable -print 2>/dev/null || true; } | sort)
		expected=$(if [ ${#expected_writable[@]} -gt 0 ]; then printf '%s\n' "${expected_writable[@]}"; fi | sort)
		if [ "$found" != "$expected" ]; then
			die "writable for uid $P_UID: [$(echo $found)], expected only the emptyDir volumes [$(echo $expected)]"
		fi
		say "writable for uid $P_UID: [$(echo $found)] (the emptyDir volumes only)"
	fi

	say "uid=$P_UID gid=$P_GID groups=${P_GROUPS:-none} cwd=$P_WORKDIR hostname=$P_HOSTNAME: ${P_ARGV[*]}"
	exec 1>&3 3>&-
	exec chroot "$R" "${setpriv[@]}" -- env -i --chdir="$P_WORKDIR" -- "${P_ENV[@]}" "${P_ARGV[@]}"
}

# ---------------------------------------------------------------------------------------------
main() {
	[ $# -eq 2 ] || die "usage: $0 BIN REPO_DIR"
	local bin repo
	bin=$(realpath -e "$1") || die "no binary $1"
	repo=$(realpath -e "$2") || die "no directory $2"
	[ -x "$bin" ] || die "$bin is not executable"
	[ "$(id -u)" = 0 ] || die "must run as root (mount namespace, chroot, setpriv)"
	local p
	p=$(plan "$bin" "$repo") || exit 1
	mkdir -p "$SANDBOX_MOUNTPOINT"
	export __PIXGATE_SANDBOX_PLAN=$p SANDBOX_MOUNTPOINT
	exec unshare --mount --uts --propagation private -- bash "$(realpath -e "${BASH_SOURCE[0]}")" --inside
}

if [ "${1:-}" = "--inside" ]; then
	inside
else
	main "$@"
fi
