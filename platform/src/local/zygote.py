"""Zeroflow's zygote: a Python process that has imported jina once and forks a ready `jina
executor` for each replica that asks, so a Python Executor's cold start skips Jina's import
(about 1.4 s of its 1.9 s on a small machine).

Started by the local runtime with the interpreter of the `jina` it would run. Protocol, one
request per connection on the Unix socket given as argv[1]:
  request:  a 4-byte big-endian length and that many bytes of JSON {"argv", "env", "cwd"}, with
            three file descriptors attached (SCM_RIGHTS): the child's stdin, stdout and stderr;
  answers:  one JSON line {"pid": N} (or {"error": "..."}), then, when the child exits, one
            JSON line {"status": S} with its raw wait status.
The connection is the child's lifeline: when the asker (the shim) closes it, the child's process
group is killed, as the shim's own children die with it. The zygote is single-threaded (fork and
threads do not mix) and dies with the runtime that started it; its children die with it.
"""

import ctypes
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback

PR_SET_PDEATHSIG = 1
MAX_REQUEST = 1 << 20


def die_with_parent(sig=signal.SIGKILL):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except Exception:  # not Linux: the parent kills us itself
        pass


def read_request(conn):
    conn.settimeout(10)
    head, fds, _, _ = socket.recv_fds(conn, 4096, 3)
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f'expected 3 file descriptors, got {len(fds)}')
    while len(head) < 4:
        more = conn.recv(4 - len(head))
        if not more:
            raise ValueError('the request ended early')
        head += more
    (size,) = struct.unpack('>I', head[:4])
    if size > MAX_REQUEST:
        raise ValueError(f'request of {size} bytes')
    body = head[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError('the request ended early')
        body += more
    conn.settimeout(None)
    return json.loads(body), fds


def shadowed(env):
    """Modules the zygote has imported that the request's PYTHONPATH holds another copy of: a
    fresh interpreter would import those copies, so the zygote must not serve that request."""
    names = set()
    for d in env.get('PYTHONPATH', '').split(os.pathsep):
        try:
            entries = os.listdir(d) if d else []
        except OSError:
            continue
        for e in entries:
            name = e[:-3] if e.endswith('.py') else e
            if name in sys.modules and '.' not in name:
                names.add(name)
    return sorted(names)


def run_child(req, fds, closing):
    """In the forked child: become the Executor process the shim would have started."""
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for f in closing:
        try:
            f.close()
        except Exception:
            pass
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    die_with_parent()
    os.chdir(req['cwd'])
    os.environ.clear()
    os.environ.update(req['env'])
    # What the interpreter would have put on sys.path from PYTHONPATH at start-up.
    extra = [p for p in req['env'].get('PYTHONPATH', '').split(os.pathsep) if p]
    sys.path[0:0] = extra
    sys.argv = list(req['argv'])
    from jina_cli import main as jina_main

    code = 0
    try:
        jina_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# What `jina executor` imports only as it starts (measured with -X importtime: about 0.1 s
# here after jina itself), imported once for every fork.
LAZY = (
    'jina_cli.api',
    'jina_cli.autocomplete',
    'jina.serve.runtimes.worker.request_handling',
    'jina.serve.runtimes.gateway.request_handling',
    'jina.jaml.parsers',
    'jina.jaml.parsers.executor.legacy',
    'filelock',
    'multiprocessing.synchronize',
    'rich._emoji_codes',
    'grpc._utilities',
)


def preload():
    import importlib

    for m in LAZY:
        try:
            importlib.import_module(m)
        except Exception:  # another jina version: it imports what it needs itself
            pass
    try:
        # Building Jina's CLI parser imports the hub and cloud sub-parsers; the parser itself is
        # built again in each fork, as `jina` builds it (nothing of it is shared).
        from jina.parsers import get_main_parser

        get_main_parser()
    except Exception:
        pass


def send(conn, obj):
    try:
        conn.sendall(json.dumps(obj).encode() + b'\n')
        return True
    except OSError:
        return False


def main():
    path = sys.argv[1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)

    def leave(*_):
        # The runtime is gone (or stops us): leave no socket behind. Children die with us.
        for f in (path, os.path.abspath(__file__)):
            try:
                os.unlink(f)
            except OSError:
                pass
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, leave)
    die_with_parent(signal.SIGTERM)
    # Bound before the import: a replica that asks meanwhile waits in the backlog, not in vain.
    import jina  # noqa: F401  (the import every Executor would pay)
    import jina_cli  # noqa: F401

    preload()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, 'accept')
    sel.register(wake_r, selectors.EVENT_READ, 'child')
    lifelines = {}  # pid -> the asker's connection
    print('zeroflow-zygote: ready', flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == 'accept':
                conn, _ = listener.accept()
                try:
                    req, fds = read_request(conn)
                except Exception as e:
                    send(conn, {'error': f'bad request: {e}'})
                    conn.close()
                    continue
                clash = shadowed(req.get('env', {}))
                if clash:
                    for fd in fds:
                        os.close(fd)
                    send(conn, {'error': 'PYTHONPATH has its own ' + ', '.join(clash[:5])})
                    conn.close()
                    continue
                closing = [listener, sel, conn] + list(lifelines.values())
                pid = os.fork()
                if pid == 0:
                    try:
                        os.close(wake_r)
                        os.close(wake_w)
                        run_child(req, fds, closing)
                    finally:
                        os._exit(127)
                for fd in fds:
                    os.close(fd)
                send(conn, {'pid': pid})
                lifelines[pid] = conn
                sel.register(conn, selectors.EVENT_READ, pid)
            elif key.data == 'child':
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    conn = lifelines.pop(pid, None)
                    if conn is not None:
                        try:
                            sel.unregister(conn)
                        except (KeyError, ValueError):
                            pass
                        send(conn, {'status': status})
                        conn.close()
            else:
                # The asker wrote nothing after its request: readable means it closed.
                pid, conn = key.data, key.fileobj
                try:
                    data = conn.recv(64)
                except OSError:
                    data = b''
                if not data:
                    sel.unregister(conn)
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass


if __name__ == '__main__':
    main()
