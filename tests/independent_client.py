#!/usr/bin/env python3
"""A second, independent Evergreen client, written from docs/design.md alone (sections 4,
5.1 and 5.2), run against repositories the `evergreen` publisher writes: it fetches and
verifies the root chain and a channel manifest, selects the release for a device and
verifies its blobs, and every decision is compared with `evergreen check`'s. A
disagreement means the documented format and the code have drifted apart.

It also writes a repository of its own from the document, which `evergreen check` must
accept and decide on alike, and manifests the document calls wrong_metadata, which it must
refuse.

Usage: independent_client.py EVERGREEN_BINARY. Standard library only (ed25519 per RFC 8032).
Run by tests/independent_client.rs."""
import base64, datetime, functools, hashlib, http.server, json, os, shutil, subprocess, sys
import tempfile, threading, urllib.error, urllib.request

# ---- ed25519 verification (RFC 8032 section 5.1.7, cofactorless) ----
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
I = pow(2, (P - 1) // 4, P)

def _add(a, b):
    x1, y1, z1, t1 = a; x2, y2, z2, t2 = b
    A = (y1 - x1) * (y2 - x2) % P; B = (y1 + x1) * (y2 + x2) % P
    C = t1 * 2 * D * t2 % P; Dd = z1 * 2 * z2 % P
    E, F, G, H = B - A, Dd - C, Dd + C, B + A
    return (E * F % P, G * H % P, F * G % P, E * H % P)

def _mul(s, p):
    q = (0, 1, 1, 0)
    while s:
        if s & 1: q = _add(q, p)
        p = _add(p, p); s >>= 1
    return q

def _eq(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0

def _decompress(s):
    if len(s) != 32: return None
    y = int.from_bytes(s, "little"); sign = y >> 255; y &= (1 << 255) - 1
    if y >= P: return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P: x = x * I % P
    if (x * x - x2) % P: return None
    if (x & 1) != sign: x = P - x
    if x == 0 and sign: return None
    return (x, y, 1, x * y % P)

GY = 4 * pow(5, P - 2, P) % P
G = _decompress(GY.to_bytes(32, "little"))

def ed25519_verify(pub, msg, sig):
    if len(sig) != 64: return False
    A = _decompress(pub); R = _decompress(sig[:32])
    if A is None or R is None: return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L: return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + pub + msg).digest(), "little") % L
    return _eq(_mul(s, G), _add(R, _mul(h, A)))

# Signing, for the repository this client writes itself (RFC 8032 section 5.1.6).
def _compress(p):
    x, y, z, _ = p
    zi = pow(z, P - 2, P); x = x * zi % P; y = y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")

def ed25519_public(seed):
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return _compress(_mul(a, G))

def ed25519_sign(seed, msg):
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    pub = _compress(_mul(a, G))
    r = int.from_bytes(hashlib.sha512(h[32:] + msg).digest(), "little") % L
    R = _compress(_mul(r, G))
    k = int.from_bytes(hashlib.sha512(R + pub + msg).digest(), "little") % L
    return R + ((r + k * a) % L).to_bytes(32, "little")

# ---- envelope (section 4.1) ----
def b64(s):
    s = s + "=" * (-len(s) % 4)
    return base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)

def pae(ptype, body):
    t = ptype.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)

def keyid(pub):
    return hashlib.sha256(pub).hexdigest()

class Fail(Exception):
    def __init__(self, kind, msg): super().__init__(f"{kind}: {msg}"); self.kind = kind

def verify_envelope(env_bytes, ptype, keys, threshold):
    """keys: list of raw 32-byte public keys. Returns the verified payload bytes."""
    env = json.loads(env_bytes)
    if env["payloadType"] != ptype:
        raise Fail("wrong_metadata", f"payloadType {env['payloadType']!r}")
    body = b64(env["payload"])
    msg = pae(ptype, body)
    good = set()
    for s in env["signatures"][:64]:
        sig = b64(s["sig"])
        for k in sorted(keys, key=lambda k: keyid(k) != s.get("keyid")):
            if k not in good and ed25519_verify(k, msg, sig):
                good.add(k); break
    if not good: raise Fail("signature", "no trusted key verifies")
    if len(good) < threshold: raise Fail("threshold", f"{len(good)} < {threshold}")
    return body

def role_keys(root, role):
    r = root["roles"][role]
    keys = []
    for kid in r["keyids"]:
        k = root["keys"][kid]
        assert k["alg"] == "ed25519"
        pub = b64(k["public"])
        assert keyid(pub) == kid, "keyid is not sha256 of the key"
        keys.append(pub)
    return keys, r["threshold"]

def ts(s):
    # RFC 3339, whole seconds (a fraction is dropped), any offset.
    s = s.replace("z", "Z").replace("t", "T")
    head, rest = s[:19], s[19:]
    if rest.startswith("."):
        rest = rest[1:].lstrip("0123456789")
    off = datetime.timezone.utc if rest == "Z" else \
        datetime.datetime.strptime(rest, "%z").tzinfo
    return datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=off)

ROOT_T = "application/vnd.evergreen.root+json"
MAN_T = "application/vnd.evergreen.manifest+json"

def get(base, path):
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/" + path, timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code in (403, 404): return None
        raise

def load_root(base, pinned_bytes, now):
    """Section 4.2: start at the pinned root, walk root/<v+1>.json until 404."""
    env = json.loads(pinned_bytes)
    root = json.loads(b64(env["payload"]))
    keys, th = role_keys(root, "root")
    root = json.loads(verify_envelope(pinned_bytes, ROOT_T, keys, th))
    for _ in range(32):
        nxt = get(base, f"root/{root['version'] + 1}.json")
        if nxt is None: break
        old_keys, old_th = role_keys(root, "root")
        verify_envelope(nxt, ROOT_T, old_keys, old_th)
        new = json.loads(b64(json.loads(nxt)["payload"]))
        nk, nth = role_keys(new, "root")
        new = json.loads(verify_envelope(nxt, ROOT_T, nk, nth))
        if new["version"] != root["version"] + 1:
            raise Fail("wrong_metadata", "root version")
        root = new
    if not ts(root["expires"]) > now: raise Fail("expired", "root")
    return root

def load_manifest(base, root, product, channel, now, trust_keys=None):
    raw = get(base, f"channels/{channel}.json")
    if trust_keys is not None: keys, th = trust_keys
    else: keys, th = role_keys(root, "manifest")
    m = json.loads(verify_envelope(raw, MAN_T, keys, th))
    if m["type"] != "manifest" or m["product"] != product or m["channel"] != channel:
        raise Fail("wrong_metadata", "product/channel")
    if not ts(m["expires"]) > now: raise Fail("expired", "manifest")
    return m

# ---- selection (section 5.2) ----
def semver_key(v):
    v = v.split("+", 1)[0]
    core, _, pre = v.partition("-")
    nums = tuple(int(x) for x in core.split("."))
    if not pre: return (nums, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (nums, 0, ids)

def bucket(product, device_id, version):
    h = hashlib.sha256(b"evergreen-rollout\0" + product.encode() + b"\0" +
                       device_id.encode() + b"\0" + version.encode()).digest()
    return int.from_bytes(h[:8], "big") % 10000

def in_rollout(b, percent):
    # "b < percent x 100 in exact decimal arithmetic; in binary floating point compute it
    # as b / 100 < percent"
    return b / 100 < percent

def percent_at(rel, now):
    ro = rel.get("rollout")
    if ro is None: return 100
    pct = 0; best = None
    for st in ro["stages"]:
        at = ts(st["at"])
        if at <= now and (best is None or at >= best):
            best = at; pct = st["percent"]
    return pct

def select(m, product, target, device_id, current, now, floor=0):
    cands = [r for r in m["releases"] if target in r["targets"]]
    cands = [r for r in cands if r.get("security_version", 0) >= floor]
    cands = [r for r in cands if in_rollout(bucket(product, device_id, r["version"]),
                                            percent_at(r, now))]
    if current is not None:
        ok = [r for r in cands if "min_version" not in r or r["min_version"] is None
              or semver_key(current) >= semver_key(r["min_version"])]
        cands = ok
        cands = [r for r in cands if semver_key(r["version"]) > semver_key(current)]
    if not cands: return None
    return max(cands, key=lambda r: semver_key(r["version"]))

def verify_blob(base, art):
    data = get(base, f"blobs/sha256/{art['sha256']}") if "url" not in art else \
        urllib.request.urlopen(art["url"], timeout=10).read()
    if len(data) != art["size"]: raise Fail("hash_mismatch", "size")
    if hashlib.sha256(data).hexdigest() != art["sha256"]: raise Fail("hash_mismatch", "sha256")
    return data

# ---- the comparison with `evergreen check` ----

PRODUCT = "com.acme.independent"
TARGET = "x86_64-linux"

def worked_example():
    """Checks the worked examples of docs/design.md (sections 4.1 and 5.2) with this
    client's own code: the document's bytes, not the publisher's, are what it is built on."""
    doc = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                            "design.md"), encoding="utf-8").read()
    block = doc.split("Worked example, from a key", 1)[1].split("```\n", 2)[1]
    ex = {}
    for line in block.splitlines():
        name, _, value = line.partition(":")
        ex[name] = value.strip()
    failures = []
    pub, body = b64(ex["public"]), ex["body"].encode()
    msg = pae(ex["payloadType"], body)
    if keyid(pub) != ex["keyid"]:
        failures.append(f"keyid: expected {ex['keyid']}, computed {keyid(pub)}")
    if msg != ex["PAE"].encode():
        failures.append(f"PAE: expected {ex['PAE']!r}, computed {msg!r}")
    if b64(ex["payload"]) != body:
        failures.append("payload: does not decode to body")
    if not ed25519_verify(pub, msg, b64(ex["sig"])):
        failures.append("sig: does not verify over the PAE with the public key")
    env = json.dumps({"payloadType": ex["payloadType"], "payload": ex["payload"],
                      "signatures": [{"keyid": ex["keyid"], "sig": ex["sig"]}]}).encode()
    try:
        if verify_envelope(env, MAN_T, [pub], 1) != body:
            failures.append("the envelope does not open to body")
    except Fail as e:
        failures.append(f"the envelope: {e}")
    b1 = bucket("com.acme.gateway", "device-1", "1.4.2")
    b7 = bucket("com.acme.gateway", "device-24084", "1.4.2")
    h = hashlib.sha256(b"evergreen-rollout\0com.acme.gateway\0device-1\0" + b"1.4.2")
    claims = [(f"`device-1` hash to `{h.hexdigest()[:16]}…`" in doc, "device-1's hash"),
              (f"mod 10000 = {b1}`: in at 55.21 %, out at 55.2 %" in doc, "device-1's bucket"),
              (in_rollout(b1, 55.21) and not in_rollout(b1, 55.2), "device-1 at 55.2 %"),
              (b7 == 7 and "`device-24084` has `b = 7`" in doc, "device-24084's bucket"),
              (not in_rollout(b7, 0.07) and in_rollout(b7, 0.08), "device-24084 at 0.07 %")]
    failures += [f"rollout example: {what}" for ok, what in claims if not ok]
    return failures

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def serve(repo):
    """Serves `repo` on 127.0.0.1 from a thread; returns the server and its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=repo))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def device_config(at, product, base, channel, repo, current, dev):
    """Writes the config of a device with its state and slots under `at`, trusting the
    repository's first root; returns its path."""
    os.makedirs(at + "/state")
    os.makedirs(at + "/slots")
    with open(at + ".json", "w") as f:
        json.dump({"product": product, "server": base, "channel": channel,
                   "target": TARGET, "trust": {"root": f"{repo}/root/1.json"},
                   "state_dir": at + "/state",
                   "slots": {"kind": "dir", "root": at + "/slots"},
                   "current_version": current, "device_id": dev}, f)
    return at + ".json"


def second_publisher(evg, work):
    """Writes a repository from design.md alone, with the latitude the document gives
    (unpadded URL-safe base64, no keyid, times with an offset and a fraction, optional
    fields left out, unsorted rollout stages, a fractional percentage), and checks that
    `evergreen check` accepts it and selects as this client does, and refuses the
    manifests the document calls wrong_metadata."""
    repo = work + "/second"
    for d in ["root", "channels", "blobs/sha256"]:
        os.makedirs(f"{repo}/{d}")
    root_seed, man_seed = bytes([1]) * 32, bytes([2]) * 32
    rpub, mpub = ed25519_public(root_seed), ed25519_public(man_seed)

    def b64u(b):
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    def write_sealed(path, ptype, doc, seed):
        body = json.dumps(doc, indent=1).encode()
        env = {"payloadType": ptype, "payload": b64u(body),
               "signatures": [{"sig": b64u(ed25519_sign(seed, pae(ptype, body)))}]}
        with open(f"{repo}/{path}", "w") as f:
            json.dump(env, f)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    plus2 = datetime.timezone(datetime.timedelta(hours=2))

    def at(**delta):
        return (now + datetime.timedelta(**delta)).astimezone(plus2).isoformat(
            timespec="milliseconds")
    product = "com.acme.second"
    write_sealed("root/1.json", ROOT_T, {
        "type": "root", "product": product, "version": 1, "expires": at(days=300),
        "keys": {keyid(rpub): {"alg": "ed25519", "public": b64u(rpub)},
                 keyid(mpub): {"alg": "ed25519", "public": b64u(mpub)}},
        "roles": {"root": {"keyids": [keyid(rpub)], "threshold": 1},
                  "manifest": {"keyids": [keyid(mpub)], "threshold": 1}}}, root_seed)

    def release(version, name="app", file_name="app", **extra):
        data = f"app {version}\n".encode()
        sha = hashlib.sha256(data).hexdigest()
        with open(f"{repo}/blobs/sha256/{sha}", "wb") as f:
            f.write(data)
        artifact = {"kind": "file", "sha256": sha, "size": len(data)}
        if file_name is not None:
            artifact["name"] = file_name
        return dict(version=version, targets={TARGET: {"components": {
            name: {"version": version, "artifact": artifact}}}}, **extra)

    def manifest(channel, releases, issued=None, expires=None):
        write_sealed(f"channels/{channel}.json", MAN_T, {
            "type": "manifest", "product": product, "channel": channel, "sequence": 1,
            "issued": issued or at(hours=-1), "expires": expires or at(days=10),
            "releases": releases}, man_seed)
    manifest("stable", [release("1.0.0"), release("1.1.0", rollout={"stages": [
        {"at": at(days=1), "percent": 100}, {"at": at(hours=-1), "percent": 12.5}]})])
    wrong = {"bad-expiry": dict(releases=[release("1.0.0")], issued=at(hours=-1),
                                expires=at(hours=-1)),
             "bad-twice": dict(releases=[release("1.0.0"), release("1.0.0+b1")]),
             "bad-file": dict(releases=[release("1.0.0", file_name=None)]),
             "bad-name": dict(releases=[release("1.0.0", name="a/b")])}
    for channel, m in wrong.items():
        manifest(channel, **m)

    server, base = serve(repo)
    failures = []

    def check(channel, dev):
        cfg = device_config(f"{work}/second-dev/{channel}-{dev}", product, base, channel,
                            repo, "0.9.0", dev)
        return subprocess.run([evg, "check", "--json", "--config", cfg],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, EVERGREEN_NOW=now.strftime(
                                  "%Y-%m-%dT%H:%M:%SZ")))
    try:
        root = load_root(base, open(f"{repo}/root/1.json", "rb").read(), now)
        m = load_manifest(base, root, product, "stable", now)
        devices = [f"device-{i}" for i in range(8)] + [
            next(d for d in (f"edge-{i}" for i in range(10**6))
                 if bucket(product, d, "1.1.0") == want) for want in (1249, 1250)]
        for dev in devices:
            mine = select(m, product, TARGET, dev, "0.9.0", now)
            p = check("stable", dev)
            if p.returncode not in (0, 10):
                failures.append(f"stable {dev}: evergreen check refused the repository "
                                f"written from the document: {p.stderr.strip()}")
                continue
            theirs = json.loads(p.stdout)["version"]
            if (mine["version"] if mine else None) != theirs:
                failures.append(f"second repository, {dev}: this client selects "
                                f"{mine and mine['version']}, evergreen check {theirs}")
        for channel in wrong:
            p = check(channel, "device-0")
            if "error[wrong_metadata]" not in p.stderr:
                failures.append(f"{channel}: expected error[wrong_metadata], found exit "
                                f"{p.returncode}: {p.stderr.strip()}")
    finally:
        server.shutdown()
    return failures

def main(evg):
    failures = [f"worked example: {f}" for f in worked_example()]
    work = tempfile.mkdtemp(prefix="evg-independent-")
    try:
        failures += second_publisher(evg, work)
        failures += compare(evg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print("DISAGREE:", f)
    print(f"{len(failures)} disagreement(s)")
    return 1 if failures else 0

def compare(evg, work):
    def run(*args, ok=(0,), env=None):
        p = subprocess.run([evg, *args], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, **(env or {})))
        if p.returncode not in ok:
            raise SystemExit(f"evergreen {' '.join(args)}: exit {p.returncode}: {p.stderr}")
        return p
    keys, repo = work + "/keys", work + "/repo"
    for k in ["root1", "root2", "rel1", "rel2"]:
        run("keygen", "--out", f"{keys}/{k}")
    run("init", repo, "--product", PRODUCT, "--root-key", f"{keys}/root1.pub",
        "--root-threshold", "1", "--manifest-key", f"{keys}/rel1.pub", "--sign", f"{keys}/root1")

    def release(channel, version, *extra, target=TARGET):
        path = f"{work}/app-{version}-{target}"
        with open(path, "w") as f:
            f.write(f"app {version} for {target}\n")
        run("release", repo, "--channel", channel, "--version", version, "--target", target,
            "--component", f"app={path}:file", *extra, "--sign", f"{keys}/rel1")
    release("stable", "1.0.0")
    release("stable", "1.1.0", "--rollout", "37")
    release("stable", "1.2.0", "--min-version", "1.1.0")
    release("stable", "1.3.0", target="arm-linux")
    release("beta", "2.0.0+b7", "--rollout", "50")
    run("promote", repo, "--version", "1.1.0", "--from", "stable", "--to", "edge",
        "--rollout", "5", "--sign", f"{keys}/rel1")
    run("rollout", repo, "--channel", "edge", "--version", "1.1.0", "--percent", "0.07",
        "--sign", f"{keys}/rel1")
    # Root 2 with new root and manifest keys: devices pinned to root 1 walk to it.
    run("rotate", repo, "--root-key", f"{keys}/root2.pub", "--root-threshold", "1",
        "--manifest-key", f"{keys}/rel2.pub", "--sign", f"{keys}/root1",
        "--sign", f"{keys}/root2", "--sign", f"{keys}/rel2")

    server, base = serve(repo)
    failures = []
    try:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        with open(f"{repo}/root/1.json", "rb") as f:
            pinned = f.read()
        root = load_root(base, pinned, now)
        if root["version"] != 2:
            failures.append(f"expected the chain to reach root 2, reached {root['version']}")
        n = 0
        for channel in ["stable", "beta", "edge"]:
            m = load_manifest(base, root, PRODUCT, channel, now)
            for r in m["releases"]:
                for t in r["targets"].values():
                    for comp in t["components"].values():
                        verify_blob(base, comp["artifact"])
            devices = [f"device-{i}" for i in range(12)]
            # The devices on either side of each rollout's edge: bucket = percent x 100
            # (out) and the one below it (in).
            for r in m["releases"]:
                p = percent_at(r, now)
                if 0 < p < 100:
                    edge = round(p * 100)
                    for want in (edge - 1, edge):
                        devices.append(next(d for d in (f"edge-{i}" for i in range(10**6))
                                            if bucket(PRODUCT, d, r["version"]) == want))
            for dev in devices:
                n += 1
                mine = select(m, PRODUCT, TARGET, dev, "1.0.0", now)
                ours = mine["version"] if mine else None
                cfg = device_config(f"{work}/dev/{channel}-{dev}", PRODUCT, base, channel,
                                    repo, "1.0.0", dev)
                p = run("check", "--json", "--config", cfg, ok=(0, 10),
                        env={"EVERGREEN_NOW": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
                theirs = json.loads(p.stdout)["version"]
                if ours != theirs:
                    failures.append(f"{channel} {dev}: this client selects {ours}, "
                                    f"evergreen check {theirs}")
        # Expiry: a manifest is good while expires > now, and expired at `expires` itself.
        m = load_manifest(base, root, PRODUCT, "stable", now)
        expires = ts(m["expires"])
        for at in (expires - datetime.timedelta(seconds=1), expires):
            try:
                load_manifest(base, root, PRODUCT, "stable", at)
                ours = "ok"
            except Fail as e:
                ours = e.kind
            cfg = f"{work}/dev/expiry-{int(at.timestamp())}"
            os.makedirs(cfg + "/state")
            os.makedirs(cfg + "/slots")
            with open(cfg + ".json", "w") as f:
                json.dump({"product": PRODUCT, "server": base, "target": TARGET,
                           "trust": {"root": f"{repo}/root/1.json"},
                           "state_dir": cfg + "/state",
                           "slots": {"kind": "dir", "root": cfg + "/slots"},
                           "current_version": "1.0.0", "device_id": "d"}, f)
            p = run("check", "--config", cfg + ".json", ok=(0, 1, 10),
                    env={"EVERGREEN_NOW": at.strftime("%Y-%m-%dT%H:%M:%SZ")})
            theirs = "expired" if "error[expired]" in p.stderr else \
                ("ok" if p.returncode != 1 else p.stderr.strip())
            if ours != theirs:
                failures.append(f"at {at}: this client says {ours}, evergreen check {theirs}")
    finally:
        server.shutdown()
    print(f"{n} devices and 2 expiry checks compared")
    return failures

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
