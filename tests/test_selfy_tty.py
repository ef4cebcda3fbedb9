#!/usr/bin/env python3
"""selfy asks for passphrases on the terminal, without echo.

Runs the real selfy on a pseudo-terminal, answers its prompts as a person
would, and checks what the terminal showed.  Usage: test_selfy_tty.py SELFY
"""
import os
import pty
import select
import shutil
import sys
import tempfile
import time

SELFY = sys.argv[1]
SECRET = b"tty-Secret-42"
passed = failed = 0


def check(desc, cond, detail=b""):
    global passed, failed
    if cond:
        passed += 1
        print("ok - " + desc)
    else:
        failed += 1
        print("not ok - " + desc)
        if detail:
            print("#   " + detail.decode(errors="replace").replace("\n", "\n#   "))


def run(args, answers, env):
    """Runs selfy on a pty; for each (prompt, reply) waits for the prompt,
    then types the reply.  Returns (exit status, everything shown)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(SELFY, [SELFY] + args, env)
    shown = b""
    deadline = time.time() + 60

    def read_some(timeout):
        nonlocal shown
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(fd, 4096)
        except OSError:
            return False
        if not data:
            return False
        shown += data
        return True

    for prompt, reply in answers:
        while prompt not in shown and time.time() < deadline:
            if not read_some(0.5):
                break
        if prompt not in shown:
            break
        shown_before = len(shown)
        os.write(fd, reply + b"\n")
        # Consume past this prompt so a repeated prompt text is waited for.
        shown = shown[:shown_before].replace(prompt, b"<asked>", 1) + shown[shown_before:]
    while time.time() < deadline and read_some(0.5):
        pass
    # A selfy still running here is stuck at a prompt: kill it and fail.
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() >= deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(fd)
            return -1, shown + b"\n[killed: still waiting for input]"
        time.sleep(0.05)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown


work = tempfile.mkdtemp(prefix="ckt-test-tty-")
try:
    env = {k: v for k, v in os.environ.items() if k != "CKT_PASSPHRASE"}
    env["CKT_CONFIG_DIR"] = work
    certs = os.path.join(work, "certs")
    priv = os.path.join(work, "my-keep-private-dir")

    # New CA + identity: each new passphrase is asked twice; the first
    # confirmation is wrong, so the CA's passphrase is asked again.
    rc, shown = run(["-k", "node"], [
        (b"New passphrase for", SECRET),
        (b"Repeat it:", b"typo"),
        (b"New passphrase for", SECRET),
        (b"Repeat it:", SECRET),
        (b"New passphrase for", SECRET),
        (b"Repeat it:", SECRET),
    ], env)
    check("selfy -k node with terminal passphrases succeeds", rc == 0, shown)
    check("the passphrase is never echoed", SECRET not in shown, shown)
    check("a mismatched confirmation is reported", b"differ" in shown, shown)
    with open(os.path.join(certs, "node.key"), "rb") as f:
        check("the key is sealed", b"CKT ENCRYPTED PRIVATE KEY" in f.read())
    with open(os.path.join(priv, "ca.key"), "rb") as f:
        check("the CA key is sealed", b"CKT ENCRYPTED PRIVATE KEY" in f.read())

    # Signing another identity asks for the CA's passphrase once.
    rc, shown = run(["-k", "client"], [
        (b"Passphrase for", SECRET),
        (b"New passphrase for", b"other-pass"),
        (b"Repeat it:", b"other-pass"),
    ], env)
    check("the CA passphrase unlocks the CA", rc == 0, shown)
    check("nothing echoed on the second run",
          SECRET not in shown and b"other-pass" not in shown, shown)

    rc, shown = run(["-k", "mallory"], [(b"Passphrase for", b"wrong")], env)
    check("a wrong CA passphrase fails", rc == 1 and b"wrong passphrase" in shown, shown)
    check("and writes nothing", not os.path.exists(os.path.join(certs, "mallory.key")))

    # Ctrl-D at the prompt gives up cleanly.
    rc, shown = run(["-k", "eve"], [(b"Passphrase for", b"\x04")], env)
    check("end of input at the prompt gives up", rc == 1 and b"no passphrase" in shown, shown)
finally:
    shutil.rmtree(work)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
