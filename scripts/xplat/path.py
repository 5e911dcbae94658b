#!/usr/bin/env python3
"""The maintenance path, walked with binaries of different platforms (scripts/xplat-test).

Like the acceptance check, driven only through the command line of DESIGN.md section 6, but
each binary is a command of its own, so that one of them can be a wrapper that runs a cross
build (`fernwart.exe` under wine64, an aarch64 `fernwart-agent` under qemu-user):

  path.py --server CMD --agent CMD --cli CMD [--cli-paths windows] [--cli-appdata DIR]
          [--cmd WRAPPER --cmd-exe WINPATH]

CMD is one executable (a wrapper script is fine). With `--cli-paths windows` the CLI is given
its files as Windows paths (Z:\\... is wine's view of /); with `--cli-appdata DIR` (the wine
prefix's %APPDATA%, seen from Linux) the technician runs without FERNWART_HOME, from the
default home there, and the login file it wrote is checked to be its owner's only. With
`--cmd WRAPPER --cmd-exe WINPATH` the second technician logs in from cmd.exe, the password piped
in from a file (`type pw.txt | fernwart.exe login ...`).

Steps: server init/run; admin login with TOTP (MFA enrolled on first use); users and machine;
agent enroll/run; technicians' and approver's logins with TOTP; key switch on; two sessions;
`connect --json` as tech1, approved by the approver while it waits; bytes through the forward
(a probe and a bulk echo); Ctrl-C (SIGINT) on `connect`: it leaves, exit 0, and the dropped link
ends the login (DESIGN section 4); `connect` as tech2 to the other session, which
`session end` then closes. Each step prints its time; the last line
says "path ok" or why it fell short (exit 1).
"""
import argparse, base64, hashlib, hmac, json, os, shutil, signal, socket, stat, struct
import subprocess, sys, tempfile, threading, time

PW = {"admin": "Adm1n-Passw0rd!2026x", "tech1": "T3ch-Passw0rd!2026x",
      "tech2": "T3ch2-Passw0rd!2026x", "op1": "0perat0r-Passw0rd!2026x"}


class Short(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Short(why)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def totp(secret, t=None):
    secret = secret.strip().replace(" ", "").upper()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int((time.time() if t is None else t) // 30)),
                   hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    return str((struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1000000).zfill(6)


def first_json(text):
    for line in text.splitlines():
        line = line.strip()
        if line[:1] in ("{", "["):
            try:
                return json.loads(line)
            except ValueError:
                pass
    try:
        return json.loads(text)
    except ValueError:
        return None


class Echo:
    """The PLC inside the machine network: a TCP echo on loopback."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()


def echo_through(port, total, chunk=1 << 16):
    """Sends `total` random bytes through the forward; true if they all come back intact."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = os.urandom(total)
    got = bytearray()

    def reader():
        while len(got) < total:
            d = s.recv(1 << 16)
            if not d:
                break
            got.extend(d)

    th = threading.Thread(target=reader)
    th.start()
    for i in range(0, total, chunk):
        s.sendall(data[i:i + chunk])
    th.join(120)
    s.close()
    return bytes(got) == data


class World:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="fw-xplat-")
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.srv_dir = os.path.join(self.tmp, "srv")
        self.agent_dir = os.path.join(self.tmp, "agent")
        self.procs = []
        self.secrets = {}
        self.echo = Echo()
        self.t0 = time.monotonic()

    def step(self, what, fn, *args, **kw):
        t = time.monotonic()
        out = fn(*args, **kw)
        print(f"  {time.monotonic() - t:6.1f} s  {what}", flush=True)
        return out

    # -- paths and environments ------------------------------------------------------------
    def cli_path(self, p):
        if self.a.cli_paths == "windows":
            return "Z:" + p.replace("/", "\\")
        return p

    def env(self, who, cli):
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        home = os.path.join(self.tmp, "home-" + who)
        ca = os.path.join(self.srv_dir, "ca.pem")
        if cli:
            if who == "tech1" and self.a.cli_appdata:
                env.pop("FERNWART_HOME", None)
            else:
                env["FERNWART_HOME"] = self.cli_path(home)
            env["FERNWART_CA_CERT"] = self.cli_path(ca)
        else:
            env["FERNWART_HOME"] = home
            env["FERNWART_CA_CERT"] = ca
        env["FERNWART_SERVER"] = self.url
        return env

    def run(self, cmd, *args, who="admin", stdin=None, check=True, timeout=120):
        p = subprocess.run([cmd, *args], input=stdin, capture_output=True, text=True,
                           env=self.env(who, cmd == self.a.cli), timeout=timeout)
        if check and p.returncode != 0:
            raise Short(f"{os.path.basename(cmd)} {' '.join(args)} exited {p.returncode}: "
                        f"{(p.stderr or p.stdout).strip()[-400:]}")
        return p

    def fw(self, *args, who="admin", stdin=None, check=True):
        return self.run(self.a.cli, *args, who=who, stdin=stdin, check=check)

    def spawn(self, cmd, *args, who="admin", log="proc"):
        out = open(os.path.join(self.tmp, log + ".log"), "w")
        p = subprocess.Popen([cmd, *args], stdout=subprocess.PIPE, stderr=out, text=True,
                             env=self.env(who, cmd == self.a.cli), start_new_session=True)
        p.log = out.name
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
                p.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)

    def close(self, ok):
        for p in self.procs:
            self.stop(p)
        if not ok:
            for p in self.procs:
                try:
                    tail = open(p.log).read().strip()[-800:]
                except OSError:
                    tail = ""
                if tail:
                    print(f"--- {os.path.basename(p.log)}\n{tail}")
        if os.environ.get("FW_KEEP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"kept {self.tmp}")

    def wait(self, what, cond, timeout=30):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if cond():
                return
            time.sleep(0.2)
        raise Short(f"{what} not within {timeout} s")

    # -- the steps -------------------------------------------------------------------------
    def start_server(self):
        self.run(self.a.server, "init", "--data", self.srv_dir, "--listen",
                 f"127.0.0.1:{self.port}", "--public-url", self.url, "--admin", "admin",
                 stdin=PW["admin"] + "\n")
        self.spawn(self.a.server, "run", "--data", self.srv_dir, log="server")

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        self.wait("server listening", listening)

    def login(self, who):
        """Password login and MFA enrolment on first use, then a login with a TOTP code."""
        if who not in self.secrets:
            self.fw("login", "--user", who, "--password-stdin", who=who, stdin=PW[who] + "\n")
            js = first_json(self.fw("mfa", "enroll", "--json", who=who).stdout)
            need(isinstance(js, dict) and "secret" in js, f"mfa enroll --json: {js}")
            self.secrets[who] = js["secret"]
            self.fw("mfa", "confirm", totp(self.secrets[who]), who=who)
        # The code of the next step first: the one just used for `mfa confirm` is spent.
        for t in (time.time() + 30, None, "wait"):
            if t == "wait":
                time.sleep(31 - time.time() % 30)
                t = None
            p = self.login_with(who, totp(self.secrets[who], t))
            if p.returncode == 0:
                return
        raise Short(f"login of {who} with TOTP: {(p.stderr or p.stdout).strip()[-300:]}")

    def login_with(self, who, code):
        """One login with password and code. With --cmd, tech2 logs in through cmd.exe, the
        password piped from a file with CRLF line ends, as a Windows user would."""
        if not (self.a.cmd and who == "tech2"):
            return self.fw("login", "--user", who, "--password-stdin", "--otp", code, who=who,
                           stdin=PW[who] + "\n", check=False)
        pw = os.path.join(self.tmp, f"pw-{who}.txt")
        with open(pw, "w", newline="") as f:
            f.write(PW[who] + "\r\n")
        line = (f"type {self.cli_path(pw)} | {self.a.cmd_exe} login --user {who} "
                f"--password-stdin --otp {code}")
        return subprocess.run([self.a.cmd, line], capture_output=True, text=True,
                              env=self.env(who, True), timeout=120)

    def users_and_machine(self):
        for name, role in (("tech1", "technician"), ("tech2", "technician"), ("op1", "approver")):
            self.fw("user", "add", name, "--role", role, "--password-stdin",
                    stdin=PW[name] + "\n")
        js = first_json(self.fw("machine", "add", "m1", "--json").stdout)
        need(isinstance(js, dict) and "token" in js, f"machine add --json: {js}")
        return js["token"]

    def start_agent(self, token):
        os.makedirs(self.agent_dir, exist_ok=True)
        with open(os.path.join(self.agent_dir, "agent.toml"), "w") as f:
            f.write('switch = "local"\n\n[[target]]\nname = "echo"\n'
                    f'address = "127.0.0.1:{self.echo.port}"\nprotocol = "tcp"\n')
        self.run(self.a.agent, "enroll", "--server", self.url, "--token", token, "--data",
                 self.agent_dir, "--ca-cert", os.path.join(self.srv_dir, "ca.pem"))
        self.spawn(self.a.agent, "run", "--data", self.agent_dir, log="agent")
        self.wait("machine m1 online", lambda: bool((self.machine("m1") or {}).get("online")),
                  timeout=60)

    def machine(self, name):
        rows = first_json(self.fw("machine", "list", "--json").stdout) or []
        return next((m for m in rows if isinstance(m, dict) and m.get("name") == name), None)

    def connect(self, session, who):
        p = self.spawn(self.a.cli, "connect", session, "--json", who=who, log=f"connect-{session}")
        box = {}

        def read():
            for line in p.stdout:
                js = first_json(line)
                if isinstance(js, dict) and "forwards" in js:
                    box["js"] = js
                    return

        th = threading.Thread(target=read, daemon=True)
        th.start()
        # `connect` asks for approval and waits; the approver releases the session.
        self.wait(f"session {session} requested", lambda: "requested" in json.dumps(
            first_json(self.fw("session", "show", session, "--json").stdout)).lower())
        self.fw("session", "approve", session, who="op1")
        th.join(60)
        if "js" not in box:
            self.stop(p)
            raise Short(f"connect printed no forwards (exit {p.poll()}): "
                        f"{open(p.log).read().strip()[-400:]}")
        fwd = {f["target"]: int(str(f["local"]).rsplit(":", 1)[1]) for f in box["js"]["forwards"]}
        need("echo" in fwd, f"forwards {fwd} lack the target echo")
        return p, fwd["echo"]

    def check_appdata_login(self):
        """The technician's login went to %APPDATA%\\fernwart and is its owner's alone."""
        path = os.path.join(self.a.cli_appdata, "fernwart", "login.json")
        need(os.path.exists(path), f"no login file in the default home: {path}")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        # wine keeps no ACLs: it maps the owner-only DACL onto the Unix mode (no bits for others).
        need(mode & 0o007 == 0, f"{path} is open to others (mode {mode:o})")

    def exits(self, p, what, says, timeout=20):
        """`connect` ends by itself after `what`, exit 0, saying `says` (as on Linux)."""
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Short(f"connect did not exit after {what} within {timeout} s")
        log = open(p.log).read()
        need(p.returncode == 0 and says in log,
             f"connect after {what}: exit {p.returncode}, said {log.strip()[-300:]!r}")

    def session(self, name, user):
        self.fw("session", "create", name, "--machine", "m1", "--target", "echo", "--user",
                user, "--duration", "1h", "--reason", "TICKET-4711 cross-platform path")

    def login_ended(self, who):
        """DESIGN section 4: a dropped technician link ends its login."""
        p = self.fw("session", "list", who=who, check=False)
        need(p.returncode != 0 and "login" in p.stderr,
             f"{who}'s login still works after leaving: exit {p.returncode} {p.stderr.strip()}")


def walk(args):
    w = World(args)
    ok = False
    try:
        w.step("server init + run", w.start_server)
        w.step("admin login (password, MFA enrolment, TOTP)", w.login, "admin")
        token = w.step("users tech1, tech2, op1 and machine m1", w.users_and_machine)
        w.step("agent enroll + run, m1 online", w.start_agent, token)
        w.step("tech1 login with TOTP", w.login, "tech1")
        if args.cli_appdata:
            w.step("tech1's login in %APPDATA%\\fernwart, owner-only", w.check_appdata_login)
        w.step("tech2 login with TOTP" + (" from cmd.exe (type pw.txt | fernwart.exe ...)"
                                           if args.cmd else ""), w.login, "tech2")
        w.step("op1 login with TOTP", w.login, "op1")
        w.step("key switch on", w.run, args.agent, "switch", "on", "--data", w.agent_dir)
        w.step("sessions s1 (tech1), s2 (tech2) created", lambda: (w.session("s1", "tech1"),
                                                                   w.session("s2", "tech2")))
        p, port = w.step("connect s1, approved while it waits", w.connect, "s1", "tech1")
        need(w.step("probe through the forward", echo_through, port, 64),
             "the probe did not come back intact")
        need(w.step(f"{args.bulk_mib} MiB echoed through the forward", echo_through, port,
                    args.bulk_mib << 20), "the bulk echo did not come back intact")
        st = first_json(w.fw("session", "show", "s1", "--json").stdout)
        need("active" in json.dumps(st).lower(), f"session show is not active: {st}")
        # Ctrl-C: the technician leaves; the dropped link ends the login.
        os.kill(p.pid, signal.SIGINT)
        w.step("Ctrl-C: connect leaves", w.exits, p, "Ctrl-C (SIGINT)", "you left the session")
        w.step("tech1's login ended with the link", w.login_ended, "tech1")
        p, port = w.step("connect s2, approved while it waits", w.connect, "s2", "tech2")
        need(echo_through(port, 4096), "bytes through s2 did not come back intact")
        w.step("session end: connect closes", lambda: (
            w.fw("session", "end", "s2"), w.exits(p, "session end", "ended")))
        print(f"  {time.monotonic() - w.t0:6.1f} s  in all")
        print("path ok")
        ok = True
    finally:
        w.close(ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--cli-paths", choices=["unix", "windows"], default="unix")
    ap.add_argument("--cli-appdata")
    ap.add_argument("--cmd", help="runs its argument as a cmd.exe command line (wine cmd /c)")
    ap.add_argument("--cmd-exe", help="the CLI's path as cmd.exe sees it")
    ap.add_argument("--bulk-mib", type=int, default=8)
    args = ap.parse_args()
    try:
        walk(args)
    except Short as e:
        print(f"falls short: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
